"""Evaluation: the BraTS region and lesion-wise scores, and the scoring of predicted cases.
"""
