"""The project's C kernels: their sources (csrc/) and their build (build.py), shared by model/ and infer/."""
