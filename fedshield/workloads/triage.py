"""A synthetic triage task: short clinical-style notes to the department that should see the patient.

Three silo domains, each with its own vocabulary and its own mix of departments (non-IID in
both inputs and labels): an emergency department writes terse acute notes, a general practice
writes plain-language notes, a children's clinic writes what parents report. Deterministic by
seed; written as instruction JSONL (``prompt``/``response``) that the instruction workload reads.
Not clinical data and not clinical advice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .instruction import InstructionExample, write_jsonl

DEPARTMENTS = ("cardiology", "dermatology", "gastroenterology", "neurology", "orthopedics", "pulmonology")
QUESTION = "Which department should see this patient? Answer with one word: " + ", ".join(DEPARTMENTS) + "."


@dataclass(frozen=True)
class Domain:
    """One silo's way of writing notes: who the patients are, what it writes per department, how often."""

    name: str
    patients: tuple[str, ...]
    findings: dict[str, tuple[str, ...]]
    mix: dict[str, float]  # department -> share of this silo's notes
    durations: tuple[str, ...]


DOMAINS: dict[str, Domain] = {d.name: d for d in (
    Domain(
        name="emergency",
        patients=("{age}M", "{age}F", "{age}yo male", "{age}yo female"),
        findings={
            "cardiology": ("crushing chest pain radiating to L arm", "palpitations, HR 150, diaphoretic", "syncope on exertion, murmur"),
            "dermatology": ("spreading erythematous rash after new abx", "blistering skin lesions, afebrile", "urticaria, no airway sx"),
            "gastroenterology": ("haematemesis x2", "RUQ pain, jaundiced", "melaena, Hb dropping"),
            "neurology": ("sudden facial droop, slurred speech", "first seizure, post-ictal", "worst headache of life, neck stiff"),
            "orthopedics": ("FOOSH, deformed wrist", "fall from ladder, cannot weight bear", "shoulder dislocation, NV intact"),
            "pulmonology": ("SOB, sats 88% RA", "pleuritic pain, haemoptysis", "wheeze, unable to complete sentences"),
        },
        mix={"cardiology": 0.3, "orthopedics": 0.25, "neurology": 0.2, "pulmonology": 0.15, "gastroenterology": 0.07,
             "dermatology": 0.03},
        durations=("onset 1h ago", "onset 30 min", "since this morning", "arrived by ambulance"),
    ),
    Domain(
        name="general-practice",
        patients=("patient aged {age}", "a {age} year old man", "a {age} year old woman"),
        findings={
            "cardiology": ("gets breathless and tight in the chest walking uphill", "ankles swelling and high blood pressure readings",
                           "notices the heart skipping beats at rest"),
            "dermatology": ("itchy scaly patches on elbows and knees", "a mole that has changed colour", "acne not helped by creams"),
            "gastroenterology": ("heartburn most evenings", "bloating and loose stools after meals", "tummy pain and weight loss"),
            "neurology": ("tingling and numbness in both feet", "headaches with flashing lights", "hand tremor when resting"),
            "orthopedics": ("knee pain climbing stairs", "stiff lower back for months", "hip aches after walking"),
            "pulmonology": ("a cough that will not go away", "wheezy at night", "short of breath, a long-time smoker"),
        },
        mix={"dermatology": 0.25, "gastroenterology": 0.25, "orthopedics": 0.2, "cardiology": 0.1, "neurology": 0.1,
             "pulmonology": 0.1},
        durations=("for three weeks", "for several months", "on and off for a year", "getting worse lately"),
    ),
    Domain(
        name="childrens-clinic",
        patients=("child aged {young}", "a {young} year old boy", "a {young} year old girl"),
        findings={
            "cardiology": ("parents say the child turns blue when feeding", "a heart murmur heard at school check", "faints during sport"),
            "dermatology": ("eczema flaring on the cheeks", "ring shaped rash on the arm", "warts on the fingers"),
            "gastroenterology": ("tummy aches before school and constipation", "vomiting after every feed", "blood in nappies"),
            "neurology": ("staring spells in class", "clumsy and walking late", "headaches waking the child at night"),
            "orthopedics": ("limping since a fall at the playground", "curved spine noticed by mum", "painful swollen ankle after football"),
            "pulmonology": ("noisy breathing and cough at night", "wheeze with every cold", "breathless when running at school"),
        },
        mix={"pulmonology": 0.3, "dermatology": 0.25, "gastroenterology": 0.2, "neurology": 0.1, "orthopedics": 0.1,
             "cardiology": 0.05},
        durations=("for two weeks", "since last winter", "says the parent", "worse at night"),
    ),
)}


def note(domain: Domain, department: str, rng: random.Random) -> str:
    """One note in ``domain``'s words for a patient ``department`` should see."""
    patient = rng.choice(domain.patients).format(age=rng.randint(19, 88), young=rng.randint(2, 15))
    return f"{patient}, {rng.choice(domain.findings[department])}, {rng.choice(domain.durations)}."


def vocabulary() -> list[str]:
    """Every phrase a note can contain (the generator's public tables, ages included) and the question."""
    phrases = [f"Triage note: {QUESTION}", *DEPARTMENTS, "0 1 2 3 4 5 6 7 8 9"]
    for d in DOMAINS.values():
        phrases += [p.format(age=1, young=1) for p in d.patients] + list(d.durations)
        phrases += [f for findings in d.findings.values() for f in findings]
    return phrases


def examples(domain: str | Domain, n: int, seed: int = 0) -> list[InstructionExample]:
    """``n`` seeded triage examples from ``domain``, labels drawn from its department mix."""
    domain = DOMAINS[domain] if isinstance(domain, str) else domain
    rng = random.Random(f"{domain.name}:{seed}")
    departments = rng.choices(list(domain.mix), weights=list(domain.mix.values()), k=n)
    return [InstructionExample.of(f"Triage note: {note(domain, d, rng)}\n{QUESTION}", d) for d in departments]


def write_silos(out: str | Path, train: int = 120, validation: int = 40, seed: int = 0,
                domains: tuple[str, ...] = tuple(DOMAINS)) -> dict[str, Path]:
    """``<out>/<domain>/train.jsonl`` and ``validation.jsonl`` per domain (a silo's data path); returns the folders."""
    out = Path(out)
    folders = {}
    for name in domains:
        rows = examples(name, train + validation, seed)
        write_jsonl(rows[:train], out / name / "train.jsonl")
        write_jsonl(rows[train:], out / name / "validation.jsonl")
        folders[name] = out / name
    return folders
