"""Knowledge distillation: what SALT adds to next-token training.

- methods.py: the method table: baseline, teacher, rkd, salt, salt_ds and their variants
- losses.py: per-token NTP / KD losses and the mixture sums (pure functions of logits)
- chunked_loss.py: the same sums from hidden states, one chunk of logits at a time (custom gradient)
- alm.py: KD across tokenizers: approximate likelihood matching of aligned chunks (pure functions)
- objective.py: the SALT objective behind one call: DenseLoss | ChunkedLoss
- schedules.py: KDPhase: w(step), tau(step), the KD share of sequences, where KD ends; the adaptive
  switch (its state, in-graph update and the host's reading)
- teacher.py: the Teacher protocol (what a KD step needs); the frozen teacher: found, checked
  against the student, restored onto the mesh
- selection.py: SALT_DS: the teacher scores sequences (median_topk | loss | difference), the KD
  phase trains on the chosen ones
- sparse.py: KD from sparse teacher targets (top-k, top-k + bucket, sampled ids)
- teacher_cache.py: the teacher cache (teacher_logits=cache): the teacher's sparse targets of every KD step,
  built once, read ahead

Imports: salt_jax.errors, salt_jax.paths, salt_jax.data, salt_jax.model, salt_jax.hf

Never train/ or experiment/.
"""
