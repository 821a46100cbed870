"""The row-wise schedule of guided pattern refinement (docs/method.md, section 7.2)."""
