"""Instance segmentation: per-object masks on top of the detection records (data so far; the task follows)."""
