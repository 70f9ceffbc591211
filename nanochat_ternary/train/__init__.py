"""train stage of the pipeline (see DESIGN.md section 1)."""
