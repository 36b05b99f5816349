"""`enet-serve serve`: flags mirror the Settings fields (flags > ENET_SERVE_* environment > defaults)."""
from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from pydantic import ValidationError

from enet_serve.service.settings import Settings, env_name


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field; a flag left out falls back to the environment, then the default."""
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = ",".join(default) if isinstance(default, list) else default
        env = env_name(name)
        help_ = f"{field.description or name} (env {env}; default: {shown if shown != [] else 'none'})".replace("%", "%%")
        annotation = field.annotation
        origin = typing.get_origin(annotation)
        if annotation is bool:
            parser.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_)
        elif origin is typing.Literal:
            parser.add_argument(_flag(name), dest=name, choices=list(typing.get_args(annotation)), default=None,
                                help=help_)
        elif annotation in (int, float, str, Path):
            parser.add_argument(_flag(name), dest=name, type=annotation, default=None, help=help_)
        else:  # lists: comma-separated
            parser.add_argument(_flag(name), dest=name, default=None, metavar="A,B", help=help_)


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**given)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        print(f"enet-serve serve: invalid settings:\n{e}", file=sys.stderr)
        return 2
    from enet_serve.service.runtime import runtime_problem

    problem = runtime_problem()
    if problem is not None:
        print(f"enet-serve serve: {problem[0]}: {problem[1]}", file=sys.stderr)
        if problem[0] == "error":
            return 2
    import uvicorn

    from enet_serve.service.app import create_app
    from enet_serve.service.drain import FATAL_EXIT_CODE, DrainingServer
    from enet_serve.service.lifecycle import Lifecycle
    from enet_serve.service.logs import configure_logging

    configure_logging(settings)
    if not settings.repository.is_dir():
        print(f"enet-serve serve: model repository {settings.repository} is not a directory", file=sys.stderr)
        return 2
    from enet_serve.service.tracing import TracingUnavailable

    lifecycle = Lifecycle()
    try:
        app = create_app(settings, lifecycle)
    except TracingUnavailable as e:
        print(f"enet-serve serve: {e}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # configure_logging's: every line with its request id
        log_level=settings.log_level,
        access_log=settings.access_log,
        ws_max_size=settings.stream_max_frame_bytes,  # the protocol layer refuses larger frames before buffering them
    )
    server = DrainingServer(config, lifecycle, settings.drain_timeout_s)
    server.run()
    if not server.started:
        return FATAL_EXIT_CODE  # the start failed (a model, with exit_on_error on): uvicorn's exit code 3
    return server.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="enet-serve serve", description="serve the model repository over HTTP")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
