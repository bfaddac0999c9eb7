"""One run: the runner and its loop, the method contract and its shared parts, data, batching, evaluation,
probes, checkpoints and the records a run writes. Imports ``common`` and ``models``.
"""
