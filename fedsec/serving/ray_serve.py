"""Deploy the same FastAPI app with Ray Serve (``fedsec serve --ray``), on a local Ray or a running cluster.

The app is built by :func:`~fedsec.serving.app.create_app` inside the replica (Ray Serve's builder-function form of
``@serve.ingress``): the app holds locks and an open log file, which cannot be pickled to a replica.

One replica by default: the PRADA monitor, quotas and rate limits keep per-client state in the replica's memory,
so several replicas would each see only part of a client's stream (a shared store would be needed; not done).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .access import AccessPolicy

log = logging.getLogger(__name__)


def serve_with_ray(
    run_dir: str | Path,
    policy: AccessPolicy,
    *,
    log_path: str | Path | None = None,
    address: str = "",
    host: str = "127.0.0.1",
    port: int = 8000,
    num_replicas: int = 1,
    block: bool = True,
) -> None:
    """Serve ``run_dir``'s model under ``policy`` with Ray Serve on ``host:port``; ``address`` "" starts a local
    Ray, "auto" or host:port joins a cluster. With ``block`` it serves until interrupted, then shuts Serve down."""
    import ray
    from ray import serve

    run_dir, log_path = str(run_dir), None if log_path is None else str(log_path)

    def build_app():
        from fedsec.results.model_file import load_final_model

        from .app import create_app
        from .querylog import QueryLog

        return create_app(load_final_model(run_dir), policy, query_log=QueryLog(log_path, keep_in_memory=False))

    if not ray.is_initialized():
        ray.init(address=address or "local", log_to_driver=False, logging_level="ERROR")
    serve.start(http_options={"host": host, "port": port})
    deployment = serve.deployment(serve.ingress(build_app)(), name="FedsecModelServer", num_replicas=num_replicas)
    serve.run(deployment.bind(), name="fedsec", route_prefix="/")
    log.info("Ray Serve: fedsec model server on http://%s:%d (%d replica(s))", host, port, num_replicas)
    if not block:
        return
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
