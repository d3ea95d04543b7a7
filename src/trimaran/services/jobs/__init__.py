"""The replicated job queue service (see :mod:`trimaran.services.jobs.service`)."""

from trimaran.services.jobs.service import JOBS_MUTANTS, JobsService

__all__ = ["JOBS_MUTANTS", "JobsService"]
