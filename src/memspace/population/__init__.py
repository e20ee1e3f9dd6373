"""Train a population: K networks of one architecture in one vectorised pass.

The design, its guarantees and its limits: docs/api/population.md.

On a small machine the networks the studies train are dominated by per-operation overhead,
not arithmetic. A :class:`Population` holds K networks that share an architecture as
one flat ``[K, P]`` tensor of parameters (each parameter a ``[K, ...]`` view of it), and runs
their forward, action regulariser and backward as one ``vmap(functional_call)``: K small
matrix products become one batched product. The optimiser is the same one :func:`fit` uses,
``torch.optim.adam.adam`` (or ``sgd``) in its single-tensor form, applied to the ``[K, P]``
rows of the members that share a learning rate, a weight decay and a step count: its
arithmetic is element-wise, so a member's update is bit for bit the one ``torch.optim.Adam``
makes on that member alone.

:func:`train_population` trains each member exactly as :func:`memspace.train.fit` would train
it alone — the same data order and regulariser probes (generators seeded from the member's
seed and epoch), the same loss, optimiser, metrics and checkpoints — with per-member
hyperparameters (:class:`Member`: seed, action and λ, learning rate, weight decay, epochs, a
target accuracy or cross-entropy, a step budget, label noise, a training subset) and its own
stopping rule while the others go on. Member k equals ``fit`` run alone with its
hyperparameters up to the round-off of batched against unbatched matrix products (tested to
1e-10 in float64 after hundreds of steps).

With ``checkpoint_dir`` the run folder holds one sub-folder per member, ``member-XXX/``, each
a complete ``fit`` run folder (``init.safetensors``, ``epoch-XXXX.safetensors``,
``metrics.jsonl``): ``memspace measure``, ``memspace report`` and ``fit`` itself read a member
like any network. A killed population restarted with the same arguments resumes every member
from its newest readable checkpoint.
"""

from ._fit import PopulationResult, train_population
from ._members import Member, member_data
from ._objective import Objective, classification, classification_with_actions
from ._stack import Population
from .trainer import PopulationTrainer

__all__ = [
    "Member",
    "Objective",
    "Population",
    "PopulationResult",
    "PopulationTrainer",
    "classification",
    "classification_with_actions",
    "member_data",
    "train_population",
]
