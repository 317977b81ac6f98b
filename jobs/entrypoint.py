"""Entrypoint for `ray job submit`: the same as `evol-ray run`, run as the job's driver.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/entrypoint.py conf/local.yaml output.path=s3://bucket/run1

The driver joins the cluster it runs on (RAY_ADDRESS is set by the job server) and needs no GPU;
engine actors ask for GPUs.
"""

import sys

from evol_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
