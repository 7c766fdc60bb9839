"""Inference: sliding-window prediction of whole volumes (ensembles, flips, Keras or
ONNX Runtime), post-processing, NIfTI out.
"""
