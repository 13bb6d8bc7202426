"""lm-eval task templates (YAML) and their Python hooks; `cream.evaluate` renders one task per benchmark."""
