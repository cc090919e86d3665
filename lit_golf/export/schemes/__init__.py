"""Quantization schemes: how one tensor becomes named parts in the artifact, and back.

A scheme is one module with `NAME`, `quantize(weight, hessian, cfg, group) -> parts` (named tensors)
and `dequantize(parts) -> weight`; `registry.SCHEMES` lists them and the artifact header names the
scheme of every tensor. Adding a scheme means adding its module, one registry entry and its test.
"""
