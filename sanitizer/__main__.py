"""`python -m sanitizer` and the `sanitizer` command.

The CLI is imported inside `main`: worker processes that the embedded cluster spawns re-import
the command's script, and need neither typer nor rich.
"""


def main() -> None:
    from sanitizer import interrupts

    interrupts.install()  # the one Ctrl-C handler, first: a press while importing is not lost
    try:
        from sanitizer.cli import main as cli_main
    except KeyboardInterrupt:  # Ctrl-C while the CLI is still being imported
        raise SystemExit(130) from None
    cli_main()


if __name__ == "__main__":
    main()
