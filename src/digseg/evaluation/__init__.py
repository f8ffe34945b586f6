"""Scoring: metrics accumulated over a dataset, dataset evaluation (predict a split, score it, threshold search),
the test protocols (whole / slide, test scale) and the E-Step evaluation of binary and palette queries."""
