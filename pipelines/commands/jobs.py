"""`bert4ray jobs list|status|logs|stop [JOB_ID] --address URL [--follow]`: the Ray Jobs of a cluster.

    bert4ray jobs list --address http://HOST:8265
    bert4ray jobs logs bert4ray-mlm-tiny-20261124-101500-3f2a --address http://HOST:8265 --follow
    bert4ray jobs status JOB_ID --address ... [--follow]   # --follow: wait, exit with the job's result
    bert4ray jobs stop JOB_ID --address ...
"""

from __future__ import annotations

import os

HELP = "list, show the status or logs of, or stop Ray Jobs on a cluster"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["list", "status", "logs", "stop"])
    parser.add_argument("job_id", nargs="?", help="submission id (for status, logs, stop)")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="Ray dashboard address, e.g. http://HOST:8265 (default: $RAY_ADDRESS)")
    parser.add_argument("--follow", action="store_true",
                        help="logs: stream until the job ends; status: wait for it. Both exit with its result")


def run(args) -> int:
    from pipelines.commands.submit import connect, follow, job_status, wait

    client = connect(args.address)
    if args.action == "list":
        jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
        for job in jobs:
            status = str(job.status).split(".")[-1]
            print(f"{job.submission_id or job.job_id}\t{status}\t{job.entrypoint}")
        if not jobs:
            print("no jobs")
        return 0
    if not args.job_id:
        raise ValueError(f"'jobs {args.action}' needs a job id (see 'bert4ray jobs list')")
    try:
        if args.action == "logs":
            if args.follow:
                return follow(client, args.job_id)
            print(client.get_job_logs(args.job_id), end="")
            return 0
        if args.action == "status":
            if args.follow:
                return wait(client, args.job_id)
            print(job_status(client, args.job_id))
            return 0
        stopped = client.stop_job(args.job_id)
    except RuntimeError as exc:        # the dashboard's HTTP errors, e.g. 404 for an unknown job id
        raise ValueError(str(exc).splitlines()[0]) from None
    print(f"job {args.job_id}: {'stop requested' if stopped else 'not running'}")
    return 0
