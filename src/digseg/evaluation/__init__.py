"""Scoring: metrics, dataset evaluation and threshold search, test protocols, E-Step evaluation of queries."""
