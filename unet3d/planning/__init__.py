"""Planning: the memory model (the predicted peak of any RunConfig), the memory one training
process may use, and the plan a dataset's fingerprint gives for it.
"""
