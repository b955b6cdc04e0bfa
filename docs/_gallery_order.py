"""The order of the examples gallery, for sphinx-gallery's within_subsection_order."""

ORDER = [
    "plot_quickstart.py", "plot_own_images.py", "plot_reading_an_explanation.py",
    "plot_grid_search.py", "plot_pipeline.py", "plot_save_load_prune.py",
    "plot_explanation_quality.py",
]


class NewcomerOrder:
    """First fit, then reading it, tuning, and the rest; unknown files last."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        return (ORDER.index(filename) if filename in ORDER else len(ORDER), filename)

    def __repr__(self):
        return f"<{self.__class__.__name__}>"
