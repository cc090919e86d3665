"""Triton kernels for CUDA training: the fused MLP up-projection and the fused softcapped cross-entropy."""
