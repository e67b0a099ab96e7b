"""How `bert4ray tune` picks and stops trials: the searcher that suggests settings, and ASHA whose
stop is a request that a training trial's own Train run honours (StopBoard)."""

from __future__ import annotations

from pipelines.tune_recipe import Param, TuneRecipe


class StopBoard:
    """Trials that the scheduler gave up on (a Ray actor): their Train runs ask it and end
    themselves, so no Train run is killed (a killed Train controller leaves its workers' placement
    group reserved when the Ray State API is off, as with include_dashboard=False)."""

    def __init__(self):
        self.stopping: set[str] = set()

    def request(self, trial_id: str) -> None:
        self.stopping.add(trial_id)

    def requested(self, trial_id: str) -> bool:
        return trial_id in self.stopping


def stop_requested(board, trial_id: str) -> bool:
    import ray
    try:
        return bool(ray.get(board.requested.remote(trial_id), timeout=30))
    except Exception:  # noqa: BLE001 - a lost board must not end a trial
        return False


def graceful_asha(board, **kwargs):
    """ASHA whose STOP is a request: the trial ends its own Train run at the next logging or
    evaluation step (see StopBoard); later results of that trial no longer count."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class GracefulASHA(ASHAScheduler):
        def __init__(self, board, **kwargs):
            super().__init__(**kwargs)
            self.board, self.stopping = board, set()

        def on_trial_result(self, tune_controller, trial, result):
            if trial.trial_id in self.stopping:
                return TrialScheduler.CONTINUE
            action = super().on_trial_result(tune_controller, trial, result)
            if action == TrialScheduler.STOP and not result.get("finished"):
                self.stopping.add(trial.trial_id)
                self.board.request.remote(trial.trial_id)
                return TrialScheduler.CONTINUE
            return action

    return GracefulASHA(board, **kwargs)


def make_searcher(recipe: TuneRecipe, params: list[Param], metric: str, mode: str, points: list[dict] | None):
    """(search_alg, param_space for the Tuner)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    s = recipe.search
    space = {p.key: p.domain() for p in params}
    if s.searcher == "random":
        return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=s.max_concurrent,
                                     random_state=s.seed), space
    if s.searcher == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        searcher = OptunaSearch(points_to_evaluate=points, seed=s.seed)
        return ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent), space
    import nevergrad as ng
    import numpy as np
    from ray.tune.search.nevergrad import NevergradSearch
    parametrization = NevergradSearch.convert_search_space(space)
    parametrization.random_state = np.random.RandomState(s.seed)      # seeded suggestions
    searcher = NevergradSearch(optimizer=ng.optimizers.registry[s.optimizer], space=parametrization,
                               metric=metric, mode=mode, points_to_evaluate=points)
    return ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent), {}
