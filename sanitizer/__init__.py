"""sanitizer: detect and irreversibly redact every face in image and video datasets."""

__version__ = "0.1.0"


def run(src: str, dst: str, config=None, on_event=None):
    """Redact every face under `src` into `dst` with the Parquet audit under `dst/_audit`: the
    job `sanitizer run` runs, in this process (for schedulers such as Airflow, Dagster,
    Prefect). `config`: a `sanitizer.config.Config`, a dict of sections, a YAML path, or None
    for the defaults. `on_event(name, **data)` receives progress events. Returns a
    `sanitizer.job.Summary` (counts, failures); raises `sanitizer.errors.SanitizerError`
    subclasses for bad input or locations (`LeaseHeld` when another run holds `dst`; `RunError`,
    with `.summary`, when every file is committed but the workers ran the detector at different
    precisions). A KeyboardInterrupt stops the run: what is committed stays, the run row says
    `interrupted`, and the KeyboardInterrupt propagates."""
    from sanitizer.job import run_job

    return run_job(src, dst, config, on_event)
