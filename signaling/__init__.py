"""The AI4All signaling node: a rendezvous for peers that federates with other signaling nodes."""
