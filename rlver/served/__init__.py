"""The simulated user served by the workflow itself (simulator.backend=served).

- `supervisor`: in the Snakemake process (or `rlver serve-simulator`): the key, the lease,
  one server job per replica, restarts, endpoint.json, the stop at the end;
- `replica`: a server job: vLLM's OpenAI-compatible server, watched and stopped with its
  lease;
- `client`: the LLM simulator's backend in the rollout and evaluate jobs: waits for the
  servers, balances requests over them, sends again what a lost server took with it;
- `files`: the files in results/<run>/simulator/ and their formats;
- `status`: the servers in `rlver status`.
"""
