"""Plain pytest collects only the single-process tests; ``tests/mpi`` runs
under mpiexec, launched by ``tests/test_under_mpiexec.py``."""

collect_ignore = ["mpi"]
