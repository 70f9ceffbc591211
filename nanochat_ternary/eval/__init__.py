"""eval stage of the pipeline (see ARCHITECTURE.md section 1)."""
