# update_<i>: reads iter_<i>/policy and all shards of iter_<i>/rollouts, writes
# iter_<i+1>/policy and iter_<i>/update/. Why one generated rule per iteration and not one
# wildcard rule: Snakemake requires every output of a rule to carry the same wildcards, and
# these two outputs differ by one in the iteration they name (no wildcard can say "i+1").
# Name them one by one: --forcerun update_0003, or --forcerun $(printf 'update_%04d ' 0 1 2).
# The rule itself only submits the training job through submitit (local executor, or
# Slurm per config cluster.*) and waits for it, so on a cluster it runs on the submit host
# (localrule) and holds one core locally.
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
            f"update_{layout.it(i)}"
        localrule: True
        input:
            config=CONFIG,
            policy=policy(i),
            rollouts=rollout_shards(i),
        output:
            policy=policy_output(i + 1),
            metrics=update_metrics(i),
        params:
            iteration=i,
            update_dir=lambda wildcards, output: os.path.dirname(output.metrics),
        log:
            log_path("update", i),
        threads: CFG.cluster.cpus_per_task if CFG.cluster.launcher == "local" else 1
        conda:
            ENV
        shell:
            "rlver update --config {input.config} --iteration {params.iteration} "
            "--policy {input.policy} --rollouts {input.rollouts} "
            "--out-policy {output.policy} --update-dir {params.update_dir} 2>&1 | tee {log}"
