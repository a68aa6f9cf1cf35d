"""A small synthetic MedSynth-schema data set for the CPU demo (not clinical data).

It exists so that ``dvc repro`` runs end to end on a laptop: a few dozen real ICD-10-CM codes
from many chapters, several encounters per code. Each encounter draws its complaints, findings,
history, distractors, speakers and phrasing at random (seeded), so a model has to read the
symptoms instead of copying a template. About a third of the notes state their code, as real
MedSynth notes do, so that redaction is exercised.
"""
from __future__ import annotations

import random

import pandas as pd

from . import icd10

ROWS_PER_CODE = 10
SEED = 20250801

# code: (complaints in the patient's words, clinician findings, assessment phrase)
CASES: dict[str, tuple[list[str], list[str], str]] = {
    "E119": (["I'm thirsty all the time", "I get up three times a night to urinate", "I feel worn out after lunch",
              "my vision gets blurry some afternoons"],
             ["hemoglobin A1c 8.1%", "fasting glucose 168 mg/dL", "BMI 33", "urine negative for ketones"],
             "type 2 diabetes mellitus without complications"),
    "I10": (["I get dull headaches in the back of my head", "the pharmacy machine said my pressure was high",
             "I feel fine otherwise", "my father had high blood pressure"],
            ["blood pressure 158/96 and 162/98 on repeat", "normal fundi", "no edema", "creatinine normal"],
            "essential hypertension"),
    "J069": (["my throat is scratchy", "my nose keeps running", "I've been sneezing for three days", "a mild dry cough"],
             ["mild pharyngeal erythema", "clear rhinorrhea", "lungs clear", "temperature 99.4 F"],
             "acute upper respiratory infection"),
    "J189": (["I've had a fever and chills for four days", "I cough up thick yellow mucus", "it hurts on the right when I breathe in",
              "I get short of breath on the stairs"],
             ["crackles at the right lung base", "temperature 102.1 F", "chest X-ray shows right lower lobe infiltrate",
              "oxygen saturation 93%"],
             "community-acquired pneumonia"),
    "J4520": (["I wheeze when I run", "my chest feels tight in cold air", "I use my inhaler about once a week",
               "I cough at night sometimes"],
              ["expiratory wheeze", "peak flow 82% of predicted", "normal between episodes"],
              "mild intermittent asthma"),
    "K219": (["I get heartburn after dinner", "there's a sour taste in my mouth", "it's worse when I lie down",
              "antacids help a little"],
             ["epigastric tenderness to light palpation", "no weight loss", "no dysphagia"],
             "gastroesophageal reflux disease without esophagitis"),
    "K5900": (["I only go to the bathroom twice a week", "my stools are hard and I have to strain", "I feel bloated",
               "I don't drink much water"],
              ["mild lower abdominal distension", "hard stool in the rectal vault", "normal bowel sounds"],
              "constipation"),
    "N390": (["it burns when I pee", "I have to go every hour", "there's pressure low in my belly", "my urine smells strong"],
             ["urinalysis positive for nitrites and leukocyte esterase", "suprapubic tenderness", "no flank pain"],
             "urinary tract infection"),
    "M5450": (["my lower back aches after I lifted boxes", "it's stiff in the morning", "the pain doesn't go down my legs",
               "sitting long makes it worse"],
              ["paraspinal muscle tenderness", "negative straight leg raise", "normal strength and reflexes"],
              "low back pain"),
    "M25562": (["my left knee hurts on the stairs", "it aches after walking", "no injury I can remember",
                "it's a bit stiff when I get up"],
               ["mild crepitus of the left knee", "no effusion", "stable ligaments"],
               "left knee pain"),
    "S83512A": (["I felt a pop in my left knee playing soccer", "it swelled up right away", "it gives way when I turn",
                 "I can't put full weight on it"],
                ["positive Lachman test on the left", "left knee effusion", "MRI shows a tear of the anterior cruciate ligament"],
                "sprain of the anterior cruciate ligament of the left knee, initial encounter"),
    "G43909": (["I get a throbbing headache on one side", "light bothers me during the attacks", "I feel sick to my stomach with it",
                "the headaches last most of the day"],
               ["normal neurological exam", "no papilledema"],
               "migraine"),
    "F411": (["I worry about everything", "I can't relax", "my mind races at night", "this has gone on for more than six months"],
             ["GAD-7 score of 15", "restless during the visit", "no suicidal ideation"],
             "generalized anxiety disorder"),
    "F329": (["I've felt down most days", "I don't enjoy things anymore", "I sleep badly and have no energy",
              "I feel worthless"],
             ["PHQ-9 score of 17", "flat affect", "denies suicidal intent"],
             "major depressive disorder, single episode"),
    "E039": (["I'm tired all the time", "I gained weight without eating more", "I'm always cold", "my skin is dry"],
             ["TSH 9.8 mIU/L", "low free T4", "slow relaxation of ankle reflexes"],
             "hypothyroidism"),
    "D509": (["I'm tired and short of breath on exertion", "people say I look pale", "my periods are heavy", "I crave ice"],
             ["hemoglobin 9.6 g/dL", "ferritin 6 ng/mL", "microcytic red cells", "conjunctival pallor"],
             "iron deficiency anemia"),
    "E784": (["I came for my cholesterol results", "I don't have any symptoms", "my mother had a heart attack at 60"],
             ["LDL cholesterol 186 mg/dL", "triglycerides 240 mg/dL", "no xanthomas"],
             "hyperlipidemia"),
    "L03115": (["my right shin is red and hot", "the redness is spreading", "it hurts to touch", "I had a scratch there last week"],
               ["warm, tender erythema over the right lower leg", "no fluctuance", "temperature 100.6 F"],
               "cellulitis of the right lower limb"),
    "H6691": (["my right ear hurts", "I can't hear well on the right", "I had a cold last week", "the pain kept me up"],
              ["bulging, red right tympanic membrane", "left ear normal", "temperature 100.9 F"],
              "right otitis media"),
    "A047": (["I've had watery diarrhea six times a day", "it started after my antibiotics for a tooth infection",
              "my belly cramps", "I feel feverish"],
             ["stool positive for Clostridioides difficile toxin", "white count 14,000", "diffuse lower abdominal tenderness"],
             "Clostridioides difficile enterocolitis"),
    "I4891": (["my heart flutters and races", "I get lightheaded sometimes", "it comes and goes", "I feel tired"],
              ["irregularly irregular pulse", "ECG shows atrial fibrillation without flutter waves", "heart rate 112"],
              "atrial fibrillation"),
    "T814XXA": (["the cut from my surgery is red", "there's some yellow drainage from the incision", "I had my gallbladder out ten days ago",
                 "I've had a low fever"],
                ["erythema and purulent drainage at the surgical incision", "temperature 100.8 F", "wound culture sent"],
                "postoperative wound infection"),
    "Z23": (["I'm here for my flu shot", "I feel well today", "I had no reaction to vaccines before"],
            ["afebrile", "influenza vaccine given in the left deltoid", "no contraindications"],
            "encounter for immunization"),
    "G4700": (["I can't fall asleep at night", "I lie awake for hours", "I'm exhausted during the day", "this has gone on for months"],
              ["sleep diary shows 4 to 5 hours of sleep", "no snoring reported", "normal exam"],
              "insomnia"),
    "K3580": (["the pain started around my belly button and moved to the right lower side", "I threw up twice", "I don't want to eat",
               "it hurts when the car goes over bumps"],
              ["tenderness at McBurney's point", "rebound tenderness", "white count 15,500", "CT shows an inflamed appendix"],
              "acute appendicitis"),
    "N200": (["I have sharp pain in my right flank that comes in waves", "it moves toward my groin", "my urine looked pink",
              "I can't sit still"],
             ["right costovertebral angle tenderness", "urinalysis with red blood cells", "CT shows a 5 mm kidney stone"],
             "kidney stone"),
    "B353": (["the skin between my toes itches", "it's peeling and cracked", "I go to the gym shower a lot", "it smells"],
             ["scaling and maceration between the fourth and fifth toes", "KOH prep positive for hyphae"],
             "tinea pedis"),
    "H4011X1": (["my eye doctor said my eye pressure was high", "I don't notice any vision change", "my grandmother went blind from glaucoma"],
                ["intraocular pressure 26 mmHg in both eyes", "cup-to-disc ratio 0.6", "early visual field defect"],
                "primary open-angle glaucoma, mild stage"),
}

NAMES = ["Mr. Alvarez", "Ms. Chen", "Mrs. Okafor", "Mr. Novak", "Ms. Patel", "Mr. Haddad", "Mrs. Larsen", "Ms. Kim",
         "Mr. Rossi", "Mrs. Nguyen", "Mr. Schmidt", "Ms. Dubois"]
HISTORY = ["seasonal allergies", "an appendectomy as a child", "a broken wrist years ago", "occasional heartburn",
           "high cholesterol in the family", "mild eczema", "no chronic illnesses", "a knee scope ten years ago"]
DISTRACTORS = ["I also stubbed my toe last week but that's fine", "my sister has asthma", "I had a cold a month ago",
               "I drink two coffees a day", "I've been stressed at work", "my back was sore last year but it's better",
               "I take a vitamin D supplement", "my neighbor had the flu"]
SPEAKERS = [("[doctor]:", "[patient]:"), ("**Doctor:**", "**Patient:**"), ("Doctor:", "Patient:"), ("[doctor]", "[{name}]:")]
OPENERS = ["What brings you in today?", "How can I help you today?", "Tell me what's going on.", "What's been bothering you?"]
FOLLOWUPS = ["Anything else?", "How long has this been going on?", "Does anything make it better or worse?",
             "Any other symptoms?"]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _encounter(code: str, rng: random.Random) -> dict:
    complaints, findings, assessment = CASES[code]
    said = rng.sample(complaints, k=min(len(complaints), rng.randint(2, 3)))
    seen = rng.sample(findings, k=min(len(findings), rng.randint(1, 2)))
    name = rng.choice(NAMES)
    age = rng.randint(19, 84)
    doc, pat = rng.choice(SPEAKERS)
    pat = pat.format(name=name)
    turns = [(doc, rng.choice(OPENERS)), (pat, _sentence(said[0]))]
    for line in said[1:]:
        turns += [(doc, rng.choice(FOLLOWUPS)), (pat, _sentence(line))]
    if rng.random() < 0.6:
        turns += [(doc, "Anything in your past history?"), (pat, f"I've had {rng.choice(HISTORY)}.")]
    if rng.random() < 0.5:
        turns += [(pat, _sentence(rng.choice(DISTRACTORS)))]
    turns += [(doc, "Let me examine you."), (doc, f"I note {' and '.join(seen)}.")]
    dialogue = "\n".join(f"{who} {what}" for who, what in turns)
    mention = f" (ICD-10: {icd10.dotted(code)})" if rng.random() < 0.35 else ""
    note = (f"**1. Subjective:** {name}, {age} years old, reports: {'; '.join(said)}. "
            f"History of {rng.choice(HISTORY)}.\n**2. Objective:** {'; '.join(seen).capitalize()}.\n"
            f"**3. Assessment:** {assessment.capitalize()}{mention}.\n**4. Plan:** Treatment and follow-up discussed.")
    return {"dialogue": dialogue, "note": note}


def build_demo_frame(rows_per_code: int = ROWS_PER_CODE, seed: int = SEED) -> pd.DataFrame:
    """The demo set in the newer MedSynth schema (``Note, Dialogue, ICD10, ICD10_desc``)."""
    rng = random.Random(seed)
    records = []
    for code in CASES:
        desc = (icd10.description(code) or "").upper()
        for _ in range(rows_per_code):
            enc = _encounter(code, rng)
            records.append({"Note": enc["note"], "Dialogue": enc["dialogue"], "ICD10": code, "ICD10_desc": desc})
    return pd.DataFrame.from_records(records)
