# block_<first>: iterations [first, min(first + K, ITERATIONS)) in one job, K =
# cluster.iterations_per_job (rlver/blocks.py): the rollouts, updates and evaluations of
# those iterations with the engines and the optimizer state kept in memory. Its outputs are
# every file the per-stage rules would write for them (rollout shards, update metrics, the
# kept policies, evaluations). Like update_<i>, one generated rule per block (its policies
# differ from its first iteration by up to K, which no wildcard can say); name them one by
# one: --forcerun block_0003. The rule submits the block job through submitit with the
# update job's allocation and waits, so it runs on the submit host (localrule). The job
# leaves the trainer state of its last iteration in iter_<last-1>/update/state/ for the
# next block, undeclared as update_<i>'s (update.smk says why).

from rlver import blocks as rlver_blocks

for first, last in rlver_blocks.blocks(ITERATIONS, CFG.cluster.iterations_per_job):
    _files = rlver_blocks.block_files(CFG, L, first, last)

    rule:
        name:
            f"block_{layout.it(first)}"
        localrule: True
        input:
            config=CONFIG,
            policy=policy(first),
            train=f"{PERSONAS}/train.parquet",
            test=f"{PERSONAS}/test.parquet",
        output:
            rollouts=[str(p) for i in sorted(_files.rollouts) for p in _files.rollouts[i]],
            metrics=[str(_files.metrics[i]) for i in sorted(_files.metrics)],
            policies=[policy_output(i) for i in sorted(_files.policies)],
            evals=[str(p) for i in sorted(_files.evals) for p in _files.evals[i]],
        params:
            first=first,
            last=last,
        log:
            log_path("block", first),
        threads: CFG.cluster.cpus_per_task if CFG.cluster.launcher == "local" else 1
        conda:
            ENV
        shell:
            "rlver block --config {input.config} --first {params.first} --last {params.last} "
            "--personas {input.train} --test-personas {input.test} 2>&1 | tee {log}"
