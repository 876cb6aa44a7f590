"""Pure tensor functions, one module per recurrence family.

Every op module offers the same three forms with the same arguments:

* ``parallel(...)`` — the materialised L×L (matrix-mixer) form: quadratic, exact, the test oracle;
* ``chunked(..., chunk_size=...)`` — training and prefill; any length, not only multiples of the chunk;
* ``step(...)`` — one token.

All take an optional initial ``state`` and return ``(output, final_state)``, so a sequence can be cut
anywhere and resumed exactly. Head-split tensors are ``[B, H, T, D]``; every state tensor has the batch
as its first dimension. Nothing here imports from the rest of the package.
"""
