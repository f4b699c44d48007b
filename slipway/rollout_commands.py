"""`slipway rollouts …` (rolling promotions: show, pause, resume, cancel, complete, and the
environment's rollout policy) and `slipway deployments rollback`."""

from __future__ import annotations

from collections.abc import Callable

import click
from google.protobuf import field_mask_pb2

from slipway.client_commands import deployments
from slipway.command_support import connect, emit, output_option
from slipway.render import Columns, render_details, table, timestamp
from slipway.v1 import rollout_service_pb2 as ro


def state(rollout: ro.Rollout) -> str:
    return ro.RolloutState.Name(rollout.state).removeprefix("ROLLOUT_STATE_")


def _figures(f: ro.RolloutFigures) -> str:
    if not f.requests:
        return "-"
    return f"{f.requests} requests, {f.error_rate * 100:.1f}% errors, p99 {f.p99_seconds * 1000:.0f} ms"


def rollout_details(r: ro.Rollout) -> str:
    steps = " → ".join(f"{s.percent}% ({s.hold_seconds:g} s)" for s in r.steps)
    step = f"{r.step_index + 1}/{len(r.steps)}" if r.step_index >= 0 else "releasing"
    return render_details(
        [
            ("ID", r.id),
            ("Model", r.model_id),
            ("Environment", r.environment),
            ("State", state(r)),
            ("Trigger", r.trigger),
            ("Message", r.message),
            ("Candidate", f"{r.candidate_deployment_id} ({r.candidate_percent}% of the traffic)"),
            ("Previous", r.previous_deployment_id),
            ("Steps", steps),
            ("Step", step),
            ("Candidate (step)", _figures(r.candidate_step_figures)),
            ("Previous (step)", _figures(r.previous_step_figures)),
            ("Previous (rollout)", _figures(r.previous_total_figures)),
            ("Started", timestamp(r.create_time)),
            ("Ended", timestamp(r.end_time)),
            ("Kept warm until", timestamp(r.keep_warm_until)),
        ]
    )


ROLLOUT_COLUMNS: Columns = [
    ("ID", lambda r: r.id),
    ("ENVIRONMENT", lambda r: r.environment),
    ("STATE", state),
    ("CANDIDATE", lambda r: r.candidate_deployment_id),
    ("PREVIOUS", lambda r: r.previous_deployment_id),
    ("SHARE", lambda r: f"{r.candidate_percent}%"),
    ("STARTED", lambda r: timestamp(r.create_time)),
    ("MESSAGE", lambda r: r.message),
]


def policy_details(p: ro.RolloutPolicy) -> str:
    steps = ", ".join(f"{s.percent}%" + (f" ({s.hold_seconds:g} s)" if s.hold_seconds else "") for s in p.steps)
    return render_details(
        [
            ("Model", p.model_id),
            ("Environment", p.environment),
            ("Mode", ro.RolloutMode.Name(p.mode).removeprefix("ROLLOUT_MODE_").lower()),
            ("Steps", steps or f"every {p.max_surge_percent}% (max surge)"),
            ("Stabilization", f"{p.stabilization_seconds:g} s per step"),
            ("Automatic rollback", "on" if p.auto_rollback else "off"),
            ("Error rate", f"rolled back above the previous + {p.max_error_rate_increase_points:g} points"),
            ("p99", f"rolled back above {p.max_p99_ratio:g} x the previous (and above {p.latency_floor_seconds:g} s)"),
            ("Judged after", f"{p.min_requests} requests of each"),
            ("Previous kept warm", f"{p.keep_previous_warm_seconds:g} s"),
            ("Updated", timestamp(p.update_time) or "never (defaults)"),
        ]
    )


def environment_options(command: Callable) -> Callable:
    command = click.option("--environment", "-e", default="", help="The environment (default: production).")(command)
    return click.option("--model", required=True, help="The model (ID or name).")(command)


@click.group()
def rollouts() -> None:
    """Rolling promotions: show, pause, resume, cancel or complete an environment's rollout,
    and set its rollout policy."""


@rollouts.command("get")
@environment_options
@output_option
def rollouts_get(model: str, environment: str, output: str) -> None:
    """The environment's rollout in progress, else its latest one."""
    response = connect().rollouts.GetRollout(ro.GetRolloutRequest(model_id=model, environment=environment))
    emit(output, response.rollout, rollout_details)


@rollouts.command("list")
@click.option("--model", required=True, help="The model (ID or name).")
@click.option("--environment", "-e", default="", help="Only this environment's rollouts.")
@output_option
def rollouts_list(model: str, environment: str, output: str) -> None:
    """A model's rollouts, newest first."""
    response = connect().rollouts.ListRollouts(ro.ListRolloutsRequest(model_id=model, environment=environment))
    emit(output, list(response.rollouts), table(ROLLOUT_COLUMNS, "No rollouts."))


def _verb(name: str, method: str, request_type, summary: str) -> None:
    @rollouts.command(name, help=summary)
    @environment_options
    @output_option
    def command(model: str, environment: str, output: str) -> None:
        stub = connect().rollouts
        response = getattr(stub, method)(request_type(model_id=model, environment=environment))
        emit(output, response.rollout, lambda r: f"Rollout {r.id}: {state(r)}. {r.message}")


_verb("pause", "PauseRollout", ro.PauseRolloutRequest, "Hold the rollout in progress at its traffic share.")
_verb("resume", "ResumeRollout", ro.ResumeRolloutRequest, "Resume a paused rollout where its step was.")
_verb("cancel", "CancelRollout", ro.CancelRolloutRequest, "Cancel the rollout: all traffic back to the previous one.")
_verb(
    "complete",
    "CompleteRollout",
    ro.CompleteRolloutRequest,
    "Complete the rollout: the candidate takes all traffic now.",
)


def _steps(text: str) -> list[ro.RolloutStep]:
    """`10:30,50:30,100` → steps of 10% for 30 s, 50% for 30 s, 100% for the stabilization time."""
    steps = []
    for part in text.split(","):
        percent, _, hold = part.strip().partition(":")
        try:
            steps.append(ro.RolloutStep(percent=int(percent), hold_seconds=float(hold or 0)))
        except ValueError:
            raise click.BadParameter(f"{part!r} is not PERCENT[:SECONDS]", param_hint="--steps") from None
    return steps


@rollouts.command("policy")
@environment_options
@click.option("--mode", type=click.Choice(["immediate", "rolling"]), help="How a promotion finishes.")
@click.option("--steps", "steps_text", help="Canary steps, PERCENT[:SECONDS],…, ending at 100 (e.g. 10:60,50:60,100).")
@click.option("--max-surge-percent", type=int, help="Without --steps: the share added per step.")
@click.option("--stabilization-seconds", type=float, help="How long each step is held.")
@click.option("--auto-rollback/--no-auto-rollback", default=None, help="Roll back on a breach of the thresholds.")
@click.option("--max-error-rate-increase-points", type=float, help="Breach: errors above the previous + this.")
@click.option("--max-p99-ratio", type=float, help="Breach: p99 above the previous x this.")
@click.option("--latency-floor-seconds", type=float, help="A p99 below this is never a breach.")
@click.option("--min-requests", type=int, help="Judge once each deployment has answered this many.")
@click.option("--keep-previous-warm-seconds", type=float, help="Keep the previous deployment's replicas this long.")
@output_option
def rollouts_policy(model: str, environment: str, output: str, steps_text: str | None, **values) -> None:
    """Show the environment's rollout policy, or change the settings given."""
    client = connect()
    given = {k: v for k, v in values.items() if v is not None}
    if not given and steps_text is None:
        shown = client.rollouts.GetRolloutPolicy(ro.GetRolloutPolicyRequest(model_id=model, environment=environment))
        emit(output, shown.policy, policy_details)
        return
    policy = ro.RolloutPolicy(model_id=model, environment=environment)
    if "mode" in given:
        given["mode"] = ro.ROLLOUT_MODE_ROLLING if given["mode"] == "rolling" else ro.ROLLOUT_MODE_IMMEDIATE
    for name, value in given.items():
        setattr(policy, name, value)
    paths = list(given)
    if steps_text is not None:
        policy.steps.extend(_steps(steps_text) if steps_text else [])
        paths.append("steps")
    request = ro.UpdateRolloutPolicyRequest(policy=policy, update_mask=field_mask_pb2.FieldMask(paths=paths))
    emit(output, client.rollouts.UpdateRolloutPolicy(request).policy, policy_details)


@deployments.command("rollback")
@environment_options
@output_option
def deployments_rollback(model: str, environment: str, output: str) -> None:
    """Re-point the environment to its previous deployment at once (ends a rollout in progress
    ROLLED_BACK, or undoes the latest promotion)."""
    request = ro.RollbackEnvironmentRequest(model_id=model, environment=environment)
    response = connect().rollouts.RollbackEnvironment(request)
    emit(
        output,
        response,
        lambda r: f"{r.rollout.environment or 'production'} of model {r.rollout.model_id} is {r.deployment_id} again.",
    )
