"""sanitizer: detect and irreversibly redact every face in image and video datasets."""

__version__ = "0.1.0"


def run(src: str, dst: str, config=None, on_event=None):
    """Redact every face under `src` into `dst` with the Parquet audit under `dst/_audit`: the
    job `sanitizer run` runs, in this process (for schedulers such as Airflow, Dagster,
    Prefect). `config`: a `sanitizer.config.Config`, a dict of sections, a YAML path, or None
    for the defaults. `on_event(name, **data)` receives progress events. Returns a
    `sanitizer.job.Summary` (counts, failures); raises `sanitizer.errors.SanitizerError`
    subclasses for bad input or locations (`LeaseHeld` when another run holds `dst`)."""
    from sanitizer.job import run_job

    return run_job(src, dst, config, on_event)
