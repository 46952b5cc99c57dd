"""Evaluation-contamination audit: do evaluation figures, questions or answers sit in a training mixture?"""
