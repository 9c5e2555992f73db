collect_ignore_glob = ["*.ipynb"]  # fixture and corpus notebooks are data for the grader, not for nbval
