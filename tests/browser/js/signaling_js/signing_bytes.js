// @ts-check

/**
 * The bytes JS signs for an announcement body and a signal body, in hex.
 * @param {[object, object, string, string]} args the announcement, the signal, and their contexts
 */
([ann, sig, ctxA, ctxS]) => [S.toHex(S.signingBytes(ctxA, ann)), S.toHex(S.signingBytes(ctxS, sig))];
