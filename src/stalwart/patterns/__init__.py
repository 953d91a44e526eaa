"""Coordination patterns built on the durable core: approvals, sagas, supervisors,
state graphs, handoffs, and ensembles (votes, mixtures of agents, generator-critic
loops, Reflexion).

Each is made of the engine's public pieces (steps, child runs, waits, the journaled
clock), so it is crash-safe, bounded and traced like any workflow code, and adds no
journal or scheduler of its own. The ones the context offers as methods
(``ctx.supervise(...)``, ``ctx.saga()``) are implemented in the engine, on its step API
(:mod:`stalwart.engine._supervisor`, :mod:`stalwart.engine._saga`), since the context
cannot import what imports it; the modules here are built with the context and agents,
as user code is. The names here are re-exported from :mod:`stalwart`. See
``docs/patterns.md``.
"""

from __future__ import annotations

from ..engine._saga import Saga as Saga
from ..engine._supervisor import ChildSpec as ChildSpec
from ._blackboard import Blackboard as Blackboard
from ._blackboard import BoardEntry as BoardEntry
from ._blackboard import Poisoned as Poisoned
from ._blackboard import poisoning as poisoning
from ._divergence import divergence as divergence
from ._divergence import token_distance as token_distance
from ._fan_in import fan_in as fan_in
from ._graph import END as END
from ._graph import START as START
from ._graph import CompiledGraph as CompiledGraph
from ._graph import Graph as Graph
from ._handoff import Handoff as Handoff
from ._handoff import Team as Team
from ._handoff import TeamResult as TeamResult
from ._members import Reply as Reply
from ._mixture import MixtureInput as MixtureInput
from ._mixture import MixtureResult as MixtureResult
from ._mixture import mixture as mixture
from ._quarantine import free_text_fields as free_text_fields
from ._quarantine import read_quarantined as read_quarantined
from ._refine import CritiqueInput as CritiqueInput
from ._refine import RefineInput as RefineInput
from ._refine import RefineResult as RefineResult
from ._refine import Round as Round
from ._refine import Verdict as Verdict
from ._refine import refine as refine
from ._reflexion import Evaluation as Evaluation
from ._reflexion import EvaluationInput as EvaluationInput
from ._reflexion import ReflectionInput as ReflectionInput
from ._reflexion import ReflexionResult as ReflexionResult
from ._reflexion import Trial as Trial
from ._reflexion import TrialInput as TrialInput
from ._reflexion import reflexion as reflexion
from ._semantic import Oscillation as Oscillation
from ._semantic import SemanticReport as SemanticReport
from ._semantic import limit_semantic_retries as limit_semantic_retries
from ._semantic import oscillation as oscillation
from ._semantic import semantic_report as semantic_report
from ._vote import Ballot as Ballot
from ._vote import VoteResult as VoteResult
from ._vote import vote as vote

__all__ = ["Ballot", "Blackboard", "BoardEntry", "ChildSpec", "CompiledGraph", "CritiqueInput",
           "END", "Evaluation", "EvaluationInput", "Graph", "Handoff", "MixtureInput",
           "MixtureResult", "Oscillation", "Poisoned", "RefineInput", "RefineResult",
           "ReflectionInput", "ReflexionResult", "Reply", "Round", "START", "Saga",
           "SemanticReport", "Team", "TeamResult", "Trial", "TrialInput", "Verdict",
           "VoteResult", "divergence", "fan_in", "free_text_fields", "limit_semantic_retries",
           "mixture", "oscillation", "poisoning", "read_quarantined", "refine", "reflexion",
           "semantic_report", "token_distance", "vote"]
