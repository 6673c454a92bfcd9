"""Front-ends over the engine's observer interface (``mpkit.engine.MapObserver`` /
``PipelineObserver``): progress bars (``_progress``), the pipeline dashboard (``_dashboard``, its
cards ``_stage_card``, and the static summary it becomes at the end, ``_summary``), a text status
for terminals (``_status``), the timeline figure (``_timeline``), and which of them fits where
mpkit runs (``_live``). They read frozen snapshots, never queues or processes."""
