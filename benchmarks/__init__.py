"""Benchmarks of the collectives against the MPI library's own."""
