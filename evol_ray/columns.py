"""Every column, status and reason name evol-ray writes, declared once.

Stages import names from here; nothing else spells a column as a string literal. The Arrow
schemas at the bottom are what a round's Parquet output and the next round's pool look like.
"""

from __future__ import annotations

import pyarrow as pa

# --- identity and lineage -------------------------------------------------------------------
ID = "id"  # this row's instruction id (an evolved instruction gets a new one)
PARENT_ID = "parent_id"  # the pool row this attempt evolved from (null for seeds)
ROOT_ID = "root_id"  # the seed at the start of the chain
ROUND = "round"  # the round that made this attempt (0 for seeds)
OP = "op"  # evolution operation: one of its recipe's (evol_ray.evolve.recipes) or the user's

# --- text -----------------------------------------------------------------------------------
INSTRUCTION = "instruction"  # the evolved instruction (the pool's instruction for seeds)
RESPONSE = "response"  # the model's answer to INSTRUCTION
PARENT_INSTRUCTION = "parent_instruction"  # carried so a failed attempt can hand its parent on
PARENT_RESPONSE = "parent_response"

# --- outcome --------------------------------------------------------------------------------
STATUS = "status"
REASON = "reason"  # named reason for any status but `kept`; null for kept rows
ERROR = "error"  # engine error message for status `error` (column and status share the word)
DUPLICATE_OF = "duplicate_of"  # for reasons `duplicate`/`near_duplicate`: the id of the row kept
JUDGE_P_EQUAL = "judge_p_equal"  # rule 1: the judge's P(Equal), null where the judge did not run
# the coherence gate's P(incoherent) of the evolved instruction and of its answer (null where it
# did not run: off, or the row was stopped before)
INSTRUCTION_P_INCOHERENT = "instruction_p_incoherent"
RESPONSE_P_INCOHERENT = "response_p_incoherent"

# --- engine accounting (per row, summed into the round manifest) ----------------------------
PROMPT_TOKENS = "prompt_tokens"
GENERATED_TOKENS = "generated_tokens"
ENGINE_SECONDS = "engine_seconds"  # wall seconds from the row's first request to its last reply

# --- statuses -------------------------------------------------------------------------------
KEPT = "kept"
ELIMINATED = "eliminated"
INVALID_INPUT = "invalid_input"
ERROR_STATUS = "error"
STATUSES = (KEPT, ELIMINATED, INVALID_INPUT, ERROR_STATUS)

# --- reasons (one name per elimination rule of WizardLM, arXiv 2304.12244 section 3.3) ------
R_NO_GAIN = "no_information_gain"  # rule 1: judge says Equal
R_SORRY = "short_apology"  # rule 2: answer has "sorry" and is short
R_STOPWORDS = "only_stopwords"  # rule 3: answer is punctuation and stop words only
R_COPIED_PROMPT = "copied_prompt_words"  # rule 4: instruction copies the evolving prompt
R_EMPTY_EVOLUTION = "empty_evolution"  # the rewriter returned nothing usable
R_EMPTY_INSTRUCTION = "empty_instruction"  # invalid_input: blank seed instruction
R_ENGINE_ERROR = "engine_error"
# not an instruction (elimination.not_instruction): seen with real models, not in WizardLM's list
R_ANSWERS_PARENT = "answers_parent"  # the "evolution" answers the parent instead of asking
R_BARE_TITLE = "bare_title"  # a heading, not a request
R_META_TALK = "meta_talk"  # talk about the rewriting ("Here is a harder version: ...")
# recipe rules (evol_ray/evolve/recipe_rules.py), on with their recipe: elimination.code_answer, .math_answer
R_NO_CODE = "answer_without_code"  # code: the task asks for code, the answer has none
R_NO_NUMBER = "answer_without_number"  # math: the answer to a word problem holds no number
# calibrated judgement (not WizardLM's; each switchable under `elimination`)
R_LOST_INPUT = "lost_input"  # the evolution refers to data ("the following sentence") it no longer carries
R_LANGUAGE_DRIFT = "language_drift"  # a text slips into another writing system than its source's
R_INCOHERENT = "incoherent"  # the coherence gate: the evolution or its answer does not make sense
# --- seed input (before any engine work) ------------------------------------------------------
R_DUPLICATE_SEED = "duplicate_seed"  # eliminated in round 1: same normalized text as `duplicate_of`
R_PROMPT_TOO_LONG = "prompt_too_long"  # a request that cannot fit model.max_model_len: never sent
INPUT_REASONS = (R_DUPLICATE_SEED, R_PROMPT_TOO_LONG)
ENGINE_REASONS = (R_NO_GAIN, R_SORRY, R_STOPWORDS, R_COPIED_PROMPT, R_EMPTY_EVOLUTION,
                  R_EMPTY_INSTRUCTION, R_ENGINE_ERROR, R_ANSWERS_PARENT, R_BARE_TITLE, R_META_TALK,
                  R_NO_CODE, R_NO_NUMBER, R_LOST_INPUT, R_LANGUAGE_DRIFT, R_INCOHERENT)

# --- dedup and quality reasons (status `eliminated`; evol_ray/dedup.py, evol_ray/quality.py) --
R_DUPLICATE = "duplicate"  # same normalized instruction as the kept row `duplicate_of`
R_NEAR_DUPLICATE = "near_duplicate"  # MinHash Jaccard >= dedup.threshold with `duplicate_of`
R_INSTRUCTION_LENGTH = "instruction_length"  # quality: instruction outside its length bounds
R_ANSWER_LENGTH = "answer_length"  # quality: answer outside its length bounds
R_REFUSAL = "refusal"  # quality: the answer contains a refusal phrase
R_REPEATS_INSTRUCTION = "answer_repeats_instruction"  # quality: the answer mostly restates it
R_UNBALANCED_FENCE = "unbalanced_code_fence"  # quality: an odd number of ``` fences
R_NON_PRINTABLE = "non_printable"  # quality: control or replacement characters
DEDUP_REASONS = (R_DUPLICATE, R_NEAR_DUPLICATE)
QUALITY_REASONS = (R_INSTRUCTION_LENGTH, R_ANSWER_LENGTH, R_REFUSAL, R_REPEATS_INSTRUCTION,
                   R_UNBALANCED_FENCE, R_NON_PRINTABLE)
REASONS = INPUT_REASONS + ENGINE_REASONS + DEDUP_REASONS + QUALITY_REASONS

# --- dedup working columns: between dedup stages only, never written -------------------------
DEDUP_TARGET = "dedup_target"  # true: may be marked; false: seeds/earlier rounds, compared against
DEDUP_KEY = "dedup_key"  # uint64: exact-text key or one LSH band's key
DEDUP_NODE = "dedup_node"  # uint64 hash of the row id
DEDUP_PART = "dedup_part"  # shuffle partition of the key

# A pool row: what one round reads.
POOL_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(ROOT_ID, pa.string(), nullable=False),
        pa.field(INSTRUCTION, pa.string()),
        pa.field(RESPONSE, pa.string()),
    ]
)

# A seed row: a pool row, plus `duplicate_of` for a seed whose normalized instruction repeats an
# earlier one's (it is never evolved; round 1 records it as `duplicate_seed`). `seed_key` (the
# normalized text's hash) lives only between the seed stages.
SEED_KEY = "seed_key"
SEED_SCHEMA = POOL_SCHEMA.append(pa.field(DUPLICATE_OF, pa.string()))

# An attempt row: what one round writes, kept or not.
ROUND_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(PARENT_ID, pa.string()),
        pa.field(ROOT_ID, pa.string(), nullable=False),
        pa.field(ROUND, pa.int32(), nullable=False),
        pa.field(OP, pa.string()),
        pa.field(INSTRUCTION, pa.string()),
        pa.field(RESPONSE, pa.string()),
        pa.field(PARENT_INSTRUCTION, pa.string()),
        pa.field(PARENT_RESPONSE, pa.string()),
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(REASON, pa.string()),
        pa.field(ERROR, pa.string()),
        pa.field(PROMPT_TOKENS, pa.int64()),
        pa.field(GENERATED_TOKENS, pa.int64()),
        pa.field(ENGINE_SECONDS, pa.float64()),
        pa.field(DUPLICATE_OF, pa.string()),
        pa.field(JUDGE_P_EQUAL, pa.float64()),
        pa.field(INSTRUCTION_P_INCOHERENT, pa.float64()),
        pa.field(RESPONSE_P_INCOHERENT, pa.float64()),
    ]
)

# The training set: every kept row of every round (plus seeds when configured).
FINAL_COLUMNS = (ID, PARENT_ID, ROOT_ID, ROUND, OP, INSTRUCTION, RESPONSE)

# Difficulty ratings (`evol-ray score`): a sample of the seeds (round 0) and of each round's kept rows.
DIFFICULTY = "difficulty"  # expected score 1..10 under the rater's probabilities; null on failure
DIFFICULTY_PROBS = "difficulty_probs"  # P(1)..P(10), renormalized over the ten answers
SCORES_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(ROOT_ID, pa.string(), nullable=False),
        pa.field(ROUND, pa.int32(), nullable=False),
        pa.field(INSTRUCTION, pa.string()),
        pa.field(DIFFICULTY, pa.float64()),
        pa.field(DIFFICULTY_PROBS, pa.list_(pa.float64())),
        pa.field(ERROR, pa.string()),
    ]
)

# `evol-ray select` (OUTPUT/selected/): every final row rated, then the rows kept by the budget.
QUALITY = "quality"  # expected answer-quality score 1..10; null on failure
SELECT_SCORE = "select_score"  # difficulty x quality, what the greedy choice ranks by
SELECT_RANK = "select_rank"  # 1 = chosen first
RATINGS_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(ROOT_ID, pa.string(), nullable=False),
        pa.field(ROUND, pa.int32(), nullable=False),
        pa.field(OP, pa.string()),
        pa.field(INSTRUCTION, pa.string()),
        pa.field(RESPONSE, pa.string()),
        pa.field(DIFFICULTY, pa.float64()),
        pa.field(QUALITY, pa.float64()),
        pa.field(ERROR, pa.string()),
    ]
)
SELECTED_SCHEMA = RATINGS_SCHEMA.append(pa.field(SELECT_SCORE, pa.float64())).append(
    pa.field(SELECT_RANK, pa.int64()))

# `evol-ray select` with `select.embedding_model`: each rated instruction's embedding.
EMBEDDING = "embedding"  # unit-length vector of the embedding model; null on failure
EMBEDDINGS_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(EMBEDDING, pa.list_(pa.float32())),
        pa.field(ERROR, pa.string()),
    ]
)

# Auto Evol-Instruct (`evolution.auto`, OUTPUT/method/): candidate methods tried on the dev set.
STEP = "step"  # optimization step: 0 = the initial method, 1.. = the optimizer's
CANDIDATE = "candidate"  # within a step: 0 = the method it starts from, 1.. = the optimizer's
METHOD = "method"  # the text of `{method}` in the recipe's in-depth frame, as operation `auto`
FEEDBACK = "feedback"  # the analysis LLM's note on one trajectory (null where it did not run)
FAILURE_RATE = "failure_rate"  # FAILED / EVALUATED on the dev set (null: never tried)
SOURCE = "source"  # where a candidate came from: initial | incumbent | optimizer
EVALUATED = "evaluated"  # dev rows tried (every dev row, or none)
FAILED = "failed"  # of those, not kept: eliminated by a rule, or an engine error
ERRORS = "errors"  # of the failed, engine errors
CHOSEN = "chosen"  # the step's winner
# A trial: one dev (or mini-batch) row evolved with one candidate method: an attempt row, plus
# the step and candidate it tried (its id is the trial's own, `identity.trial_id`).
TRIAL_SCHEMA = ROUND_SCHEMA.append(pa.field(STEP, pa.int32(), nullable=False)).append(
    pa.field(CANDIDATE, pa.int32(), nullable=False))
TRAJECTORY_SCHEMA = TRIAL_SCHEMA.append(pa.field(FEEDBACK, pa.string()))
METHODS_SCHEMA = pa.schema(
    [
        pa.field(STEP, pa.int32(), nullable=False),
        pa.field(CANDIDATE, pa.int32(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(METHOD, pa.string()),
        pa.field(FAILURE_RATE, pa.float64()),
        pa.field(EVALUATED, pa.int64(), nullable=False),
        pa.field(FAILED, pa.int64(), nullable=False),
        pa.field(ERRORS, pa.int64(), nullable=False),
        pa.field(CHOSEN, pa.bool_(), nullable=False),
    ]
)
