"""The leaderboard: entries and their checks, the page, and verification by retraining. Imports
``common`` and ``training``.
"""
