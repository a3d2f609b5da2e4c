"""Disaster recovery: plans, schedules, run state, hooks, and the scheduling decisions.

Vocabulary: a *plan* (``plan.py``) declares *jobs* (what to back up, into which
*repositories*, on which *schedule*, kept how long, against which RPO/RTO) and
*notification targets*. A *schedule* (``schedule.py``) turns a cron expression
or a plain form ("daily at 02:00", "every 4h") into *occurrences*, instants in
the job's time zone. The *state database* (``state.py``) records every *run*
of a job, verifications and notifications, and survives restarts. The
*scheduler* (``scheduler.py``) decides from plan + state + clock which jobs are
*due* and drives them through an injected ``execute`` callable. *Hooks*
(``hooks.py``) are commands run before and after a job. Notifications
(``notify.py``), Prometheus metrics (``metrics.py``) and the RPO status with
its 3-2-1 score (``status.py``) report on all of this. docs/plan.md is the
user's reference.

This layer sits above ``ops`` and below ``session``: it never opens a
repository from a URL itself; callers inject an opener or an ``execute``
callable that does.
"""
