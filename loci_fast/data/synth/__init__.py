"""PyBullet scene generator for the embedded default dataset (MOVi-style multi-object videos)."""
