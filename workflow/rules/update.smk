# update_<i>: reads iter_<i>/policy and all shards of iter_<i>/rollouts, writes
# iter_<i+1>/policy and iter_<i>/update/. One rule per iteration, because its outputs
# live in two iterations' folders. The rule itself only submits the training job through
# submitit (local executor, or Slurm per config cluster.*) and waits for it, so on a
# cluster it runs on the submit host (localrule) and holds one core locally.
#
# The job also leaves trainer state in iter_<i>/update/state/ (DeepSpeed checkpoints: the
# optimizer moments) and, for PPO, iter_<i>/update/critic/, which update_<i+1> continues
# from (found by the run's layout). They are deliberately not declared inputs/outputs:
# retention (algorithm.keep_state_iterations) deletes them, and a declared file gone
# missing would make Snakemake rerun update_<i> and everything after it. An update whose
# predecessor's state is gone starts a fresh optimizer (and critic) and says so.

for i in range(ITERATIONS):

    rule:
        name:
            f"update_{it(i)}"
        localrule: True
        input:
            config=CONFIG,
            policy=policy(i),
            rollouts=rollout_shards(i),
        output:
            policy=policy_output(i + 1),
            metrics=f"{RUN}/iter_{it(i)}/update/metrics.json",
        params:
            iteration=i,
            update_dir=lambda wildcards, output: os.path.dirname(output.metrics),
        log:
            f"{LOGS}/update/iter_{it(i)}.log",
        threads: CFG.cluster.cpus_per_task if CFG.cluster.launcher == "local" else 1
        conda:
            ENV
        shell:
            "rlver update --config {input.config} --iteration {params.iteration} "
            "--policy {input.policy} --rollouts {input.rollouts} "
            "--out-policy {output.policy} --update-dir {params.update_dir} 2>&1 | tee {log}"
