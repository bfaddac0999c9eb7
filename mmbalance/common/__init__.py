"""What every job shares, without torch: the spec, the registries, the run records, their locks and states,
the metric catalogue and the comparison key. Imports nothing else of mmbalance.
"""
