"""moetape: record MoE robot-policy rollouts to a crash-safe HDF5 event log and replay them offline."""

__version__ = "0.1.0"
