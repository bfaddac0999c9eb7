"""Many runs: suites and grids, planning, executors (local, Slurm), tuning and its settings files.
Imports ``common``, ``training`` and ``leaderboard``.
"""
