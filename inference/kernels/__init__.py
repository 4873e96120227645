"""The fast paths the runner uses, and the checks that prove each one at start-up against the plain path:
paged attention (plain, fused, Triton), the fused rotary embedding and RMSNorm, and 8-bit weights on the
CPU."""
