"""Hospital profiles: one YAML file says what a site has and what it wants.

:func:`load_profile` reads a profile (loading), validates its structure against the schema
(schema; unknown keys are errors) and, given the component registry, checks every component
it names and their parameters (checks), so a job never starts on a profile that would fail
half-way. Every problem becomes a :class:`ProfileIssue` naming the file, the line, the key
path and what was expected (document).
"""

from medadapt.engine.profile.checks import (
    check_components as check_components,
)
from medadapt.engine.profile.checks import (
    summarize as summarize,
)
from medadapt.engine.profile.checks import (
    unsafe_augmentation as unsafe_augmentation,
)
from medadapt.engine.profile.document import (
    Loc as Loc,
)
from medadapt.engine.profile.document import (
    ProfileDocument as ProfileDocument,
)
from medadapt.engine.profile.document import (
    ProfileError as ProfileError,
)
from medadapt.engine.profile.document import (
    ProfileIssue as ProfileIssue,
)
from medadapt.engine.profile.loading import (
    load_profile as load_profile,
)
from medadapt.engine.profile.schema import (
    AUTO as AUTO,
)
from medadapt.engine.profile.schema import (
    DEFAULT_RULE_WITH_LABELS as DEFAULT_RULE_WITH_LABELS,
)
from medadapt.engine.profile.schema import (
    DEFAULT_RULE_WITHOUT_LABELS as DEFAULT_RULE_WITHOUT_LABELS,
)
from medadapt.engine.profile.schema import (
    DEFAULT_SCORE as DEFAULT_SCORE,
)
from medadapt.engine.profile.schema import (
    DEFAULT_SCORE_WITH_SOURCE as DEFAULT_SCORE_WITH_SOURCE,
)
from medadapt.engine.profile.schema import (
    DEVICES as DEVICES,
)
from medadapt.engine.profile.schema import (
    MAX_PATCH_SIDE as MAX_PATCH_SIDE,
)
from medadapt.engine.profile.schema import (
    MAX_PATCH_VOXELS as MAX_PATCH_VOXELS,
)
from medadapt.engine.profile.schema import (
    Acceptance as Acceptance,
)
from medadapt.engine.profile.schema import (
    AdaptationChoice as AdaptationChoice,
)
from medadapt.engine.profile.schema import (
    AugmentationChoice as AugmentationChoice,
)
from medadapt.engine.profile.schema import (
    BackboneChoice as BackboneChoice,
)
from medadapt.engine.profile.schema import (
    Data as Data,
)
from medadapt.engine.profile.schema import (
    DecisionChoice as DecisionChoice,
)
from medadapt.engine.profile.schema import (
    OperatingPoint as OperatingPoint,
)
from medadapt.engine.profile.schema import (
    OptimizerChoice as OptimizerChoice,
)
from medadapt.engine.profile.schema import (
    Preprocessing as Preprocessing,
)
from medadapt.engine.profile.schema import (
    Profile as Profile,
)
from medadapt.engine.profile.schema import (
    Report as Report,
)
from medadapt.engine.profile.schema import (
    SelectionChoice as SelectionChoice,
)
from medadapt.engine.profile.schema import (
    Site as Site,
)
from medadapt.engine.profile.schema import (
    SplitFractions as SplitFractions,
)
from medadapt.engine.profile.schema import (
    SubgroupAttribute as SubgroupAttribute,
)
from medadapt.engine.profile.schema import (
    Task as Task,
)
from medadapt.engine.profile.schema import (
    Training as Training,
)
from medadapt.engine.profile.schema import (
    Window as Window,
)
from medadapt.engine.profile.schema import (
    validation_labelled as validation_labelled,
)
