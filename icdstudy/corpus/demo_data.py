"""A small synthetic data set shaped like MedSynth, for the CPU demo (not clinical data).

It exists so that ``dvc repro`` runs the whole study on a laptop on a task with the study's
difficulty, at demo scale. Like MedSynth: few rows per code (5 to 7) and codes that come in
groups of siblings sharing a category and its vocabulary (type 1 or 2 diabetes with or without a
complication, asthma by severity, laterality, initial or subsequent encounter, CKD stage, depth of
a surgical-site infection), so that most errors can land in the right category but on the wrong
code. The detail that separates siblings is said in varied words, or only shown by a finding (a
lab value, an exam result, a time course), or both. Encounters also mention other conditions as
history, distractors (often the other side of the body), and negated symptoms. Dialogues describe
and do not name the diagnosis; notes name it, and about a third state the code, so that redaction
is exercised. Every draw comes from one seeded generator: the same bytes on every machine.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import pandas as pd

from icdstudy import icd10

SEED = 20261201
ROWS_PER_CODE = (5, 7)  # drawn per code, like MedSynth's ~5 rows per code


@dataclass
class Variant:
    said: list[str]     # the patient (or doctor) saying the separating detail, in varied words
    found: list[str]    # findings that show the detail; {lo-hi} is a number drawn from that range
    assessment: str     # how the note names the diagnosis


@dataclass
class Group:
    complaints: list[str]                  # what every sibling's patients say
    findings: list[str]                    # what every sibling's exam shows
    codes: dict[str, Variant]
    negations: list[str] = field(default_factory=list)  # symptoms the patient does not have


def _side(word: str, part: str) -> list[str]:
    return [f"my {word} {part} hurts", f"it's the {part} on the {word} side", f"the {word} one, not the other {part}"]


GROUPS: dict[str, Group] = {
    "diabetes": Group(
        ["I'm thirsty all the time", "I get up at night to urinate", "I'm worn out in the afternoons",
         "my vision is blurry some days"],
        ["blood pressure {118-138}/{72-86}", "pedal pulses present", "BMI {27-36}"],
        {"E119": Variant(["my sugars have been fine on metformin", "my numbers at home are mostly under 140",
                          "the eye doctor and the kidney tests were normal last year"],
                         ["hemoglobin A1c {6.5-7.3}%", "urine albumin normal", "monofilament sensation intact"],
                         "type 2 diabetes mellitus without complications, controlled on metformin"),
         "E1165": Variant(["my meter reads over 300 most mornings", "I ran out of my metformin weeks ago",
                           "I've lost weight without trying"],
                          ["random glucose {290-410} mg/dL", "hemoglobin A1c {10.1-12.6}%"],
                          "type 2 diabetes mellitus with hyperglycemia"),
         "E1122": Variant(["the kidney doctor says my diabetes is damaging my kidneys", "my urine is foamy"],
                          ["eGFR {38-55} mL/min", "urine albumin-to-creatinine ratio {320-900} mg/g"],
                          "type 2 diabetes mellitus with diabetic chronic kidney disease"),
         "E1140": Variant(["my feet burn at night", "it feels like walking on cotton", "pins and needles in both feet"],
                          ["reduced monofilament sensation in both feet", "absent ankle reflexes",
                           "vibration sense decreased at the toes"],
                          "type 2 diabetes mellitus with diabetic neuropathy"),
         "E109": Variant(["I've been on insulin since I was {7-15}", "I wear an insulin pump",
                          "my diabetes started when I was a kid"],
                         ["hemoglobin A1c {6.6-7.5}%", "C-peptide undetectable"],
                         "type 1 diabetes mellitus without complications")},
        ["no chest pain", "no foot sores"]),
    "asthma": Group(
        ["I wheeze", "my chest feels tight", "I cough at night sometimes", "cold air sets it off"],
        ["no accessory muscle use", "heart rate {72-104}"],
        {"J4520": Variant(["it only happens when I run, maybe once a week", "I use my rescue inhaler once or twice a week",
                           "I sleep through the night"],
                          ["FEV1 {86-96}% of predicted", "lungs clear between episodes"],
                          "mild intermittent asthma, uncomplicated"),
         "J4521": Variant(["since my cold three days ago I can't catch my breath", "my inhaler doesn't last two hours now"],
                          ["oxygen saturation {90-94}%", "diffuse wheeze with prolonged expiration",
                           "peak flow {52-68}% of personal best"],
                          "mild intermittent asthma with acute exacerbation"),
         "J4530": Variant(["I need my inhaler three or four days a week, not every day",
                           "it wakes me up three or four nights a month"],
                          ["FEV1 {80-89}% of predicted"], "mild persistent asthma, uncomplicated"),
         "J4540": Variant(["I use my rescue inhaler every day", "I wake up wheezing more than once a week",
                           "I can't finish a flight of stairs some days"],
                          ["FEV1 {61-78}% of predicted"], "moderate persistent asthma, uncomplicated")},
        ["no fever", "no chest pain", "no ankle swelling"]),
    "joint pain": Group(
        ["it aches after walking", "it's stiff when I get up", "no injury I can remember", "it's worse in the evening"],
        ["mild crepitus", "no effusion", "pain at the end of the range of motion"],
        {"M25561": Variant(_side("right", "knee"), ["tenderness along the medial joint line of the right knee",
                                                  "right knee stable, no effusion"], "pain in right knee"),
         "M25562": Variant(_side("left", "knee"), ["tenderness along the medial joint line of the left knee",
                                                 "left knee stable, no effusion"], "pain in left knee"),
         "M25511": Variant(_side("right", "shoulder") + ["reaching up to the shelf hurts on the right"],
                           ["painful arc on abduction of the right shoulder"], "pain in right shoulder"),
         "M25512": Variant(_side("left", "shoulder") + ["reaching up to the shelf hurts on the left"],
                           ["painful arc on abduction of the left shoulder"], "pain in left shoulder")},
        ["no locking", "no numbness", "no fever"]),
    "acl sprain": Group(
        ["I felt a pop in my knee playing {soccer|basketball|tennis}", "it swelled up", "it gives way when I turn"],
        ["positive Lachman test", "MRI shows a tear of the anterior cruciate ligament"],
        {"S83511A": Variant(["it happened {2-6} days ago, this is the first time I'm seeing anyone",
                             "my right knee, the day before yesterday"],
                            ["right knee effusion", "acute injury of the right knee, first evaluation"],
                            "sprain of the anterior cruciate ligament of the right knee, initial encounter"),
         "S83512A": Variant(["it happened {2-6} days ago, this is the first time I'm seeing anyone",
                             "my left knee, the day before yesterday"],
                            ["left knee effusion", "acute injury of the left knee, first evaluation"],
                            "sprain of the anterior cruciate ligament of the left knee, initial encounter"),
         "S83511D": Variant(["I'm back for my follow-up on the right knee", "physical therapy is going well",
                             "it's been {4-9} weeks since I hurt it"],
                            ["right knee healing as expected at follow-up", "range of motion improving"],
                            "sprain of the anterior cruciate ligament of the right knee, subsequent encounter"),
         "S83512D": Variant(["I'm back for my follow-up on the left knee", "physical therapy is going well",
                             "it's been {4-9} weeks since I hurt it"],
                            ["left knee healing as expected at follow-up", "range of motion improving"],
                            "sprain of the anterior cruciate ligament of the left knee, subsequent encounter")},
        ["no numbness in the foot", "no other injuries"]),
    "depression": Group(
        ["I've felt down most days", "I don't enjoy things anymore", "I sleep badly", "I have no energy"],
        ["flat affect", "denies suicidal intent", "oriented and coherent"],
        {"F320": Variant(["I still get to work every day", "it's there but I manage"], ["PHQ-9 score of {5-9}"],
                         "major depressive disorder, single episode, mild"),
         "F321": Variant(["I've called in sick a few times", "it's getting hard to keep up at work"],
                         ["PHQ-9 score of {10-14}"], "major depressive disorder, single episode, moderate"),
         "F322": Variant(["I can barely get out of bed", "I stopped eating properly", "I haven't left the house in weeks"],
                         ["PHQ-9 score of {20-26}", "psychomotor slowing"],
                         "major depressive disorder, single episode, severe without psychotic features"),
         "F411": Variant(["I worry about everything, all day", "my mind races and I can't relax"],
                         ["GAD-7 score of {12-19}", "restless and tense during the visit"],
                         "generalized anxiety disorder")},
        ["no hallucinations", "no thoughts of self-harm"]),
    "atrial fibrillation": Group(
        ["my heart flutters", "I get lightheaded", "I'm tired", "I feel my heartbeat in my throat"],
        ["irregularly irregular pulse", "ECG shows atrial fibrillation", "heart rate {96-128}"],
        {"I480": Variant(["it comes and goes, each spell stops by itself within a day",
                          "between the spells my heart feels normal"],
                         ["Holter shows episodes of {2-20} hours that end on their own"],
                         "paroxysmal atrial fibrillation"),
         "I4811": Variant(["it has been constant for over a year", "it never goes back to normal, but we still want to fix it"],
                          ["in atrial fibrillation on every ECG for {13-30} months, rhythm control still planned"],
                          "longstanding persistent atrial fibrillation"),
         "I4821": Variant(["we decided together to stop trying to get the rhythm back",
                           "my cardiologist said we just control the rate now"],
                          ["accepted permanent rhythm, rate control only"], "permanent atrial fibrillation")},
        ["no chest pain", "no fainting"]),
    "cystitis": Group(
        ["it burns when I pee", "I have to go every hour", "there's pressure low in my belly"],
        ["suprapubic tenderness", "no flank tenderness", "temperature {97.9-99.3} F"],
        {"N3000": Variant(["my urine looks clear", "I haven't seen any blood"],
                          ["urinalysis positive for nitrites and leukocytes, no red blood cells"],
                          "acute cystitis without hematuria"),
         "N3001": Variant(["my urine was pink this morning", "I saw blood when I wiped"],
                          ["urinalysis with many red blood cells, nitrites positive"], "acute cystitis with hematuria"),
         "N390": Variant(["I've had these infections before, I'm not sure where it is", "it's different this time"],
                         ["urine culture grew E. coli, site not determined"], "urinary tract infection, site not specified")},
        ["no fever", "no back pain", "no vaginal discharge"]),
    "otitis": Group(
        ["my ear hurts", "I can't hear well", "I had a cold last week", "the pain kept me up"],
        ["temperature {99.6-101.6} F", "nasal congestion"],
        {"H6691": Variant(["it's my right ear", "the right side, the left ear is fine"],
                          ["bulging red right tympanic membrane, left normal"], "right otitis media"),
         "H6692": Variant(["it's my left ear", "the left side, the right ear is fine"],
                          ["bulging red left tympanic membrane, right normal"], "left otitis media"),
         "H6693": Variant(["both ears hurt", "it's in both of them"], ["both tympanic membranes red and bulging"],
                          "bilateral otitis media")},
        ["no discharge from the ear", "no dizziness"]),
    "ckd": Group(
        ["I'm more tired lately", "my ankles swell by evening", "I was told my kidneys are weak"],
        ["blood pressure {136-162}/{80-96}", "trace pedal edema", "urine protein present"],
        {"N1831": Variant(["the kidney numbers dipped a little this year"], ["eGFR {45-59} mL/min"],
                          "chronic kidney disease, stage 3a"),
         "N1832": Variant(["the kidney doctor wants to see me every few months now"], ["eGFR {30-44} mL/min"],
                          "chronic kidney disease, stage 3b"),
         "N184": Variant(["we talked about a fistula for the future"], ["eGFR {16-29} mL/min"],
                         "chronic kidney disease, stage 4 (severe)"),
         "N185": Variant(["they want to start planning dialysis"], ["eGFR {7-14} mL/min", "potassium {5.3-6.0}"],
                         "chronic kidney disease, stage 5")},
        ["no shortness of breath", "no chest pain"]),
    "headache": Group(
        ["I get bad headaches", "they last most of the day", "I have to lie down"],
        ["normal neurological exam", "no papilledema"],
        {"G43009": Variant(["it throbs on one side with no warning beforehand", "light and noise make it worse"],
                           ["no aura reported", "nausea with attacks"], "migraine without aura"),
         "G43109": Variant(["I see zigzag lines for twenty minutes before it starts", "my hand tingles before the pain"],
                           ["typical visual aura preceding the headaches"], "migraine with aura"),
         "G44209": Variant(["it feels like a band squeezing my head", "both sides, pressing, not throbbing"],
                           ["pericranial muscle tenderness"], "tension-type headache")},
        ["no weakness", "no fever", "no head injury"]),
    "cellulitis": Group(
        ["the skin is red and hot", "the redness is spreading", "it hurts to touch", "I had a scratch there"],
        ["warm tender erythema", "no fluctuance", "temperature {99.4-101.2} F"],
        {"L03115": Variant(["it's my right {shin|calf|ankle}", "the right leg, the left one is fine"],
                           ["erythema over the right lower leg"], "cellulitis of the right lower limb"),
         "L03116": Variant(["it's my left {shin|calf|ankle}", "the left leg, the right one is fine"],
                           ["erythema over the left lower leg"], "cellulitis of the left lower limb")},
        ["no open wound now", "no chills"]),
    "lipids": Group(
        ["I came for my cholesterol results", "I don't have any symptoms", "my father had a heart attack at {52-66}"],
        ["no xanthomas", "blood pressure {118-134}/{72-84}"],
        {"E7800": Variant(["they said it's the bad cholesterol that's high"],
                          ["LDL {172-236} mg/dL, triglycerides {88-140} mg/dL"], "pure hypercholesterolemia"),
         "E781": Variant(["they said it's the triglycerides this time"],
                         ["triglycerides {430-880} mg/dL, LDL {92-124} mg/dL"], "pure hyperglyceridemia"),
         "E782": Variant(["both the cholesterol and the fats were high"],
                         ["LDL {168-214} mg/dL, triglycerides {260-410} mg/dL"], "mixed hyperlipidemia"),
         "E784": Variant(["they mentioned a special lipoprotein test"], ["lipoprotein(a) {92-190} mg/dL, LDL normal"],
                         "other hyperlipidemia, elevated lipoprotein(a)")},
        ["no chest pain", "no leg pain when walking"]),
    "wound infection": Group(
        ["the cut from my surgery is red", "there's drainage from the incision",
         "I had my {gallbladder|appendix|hernia} operation {7-14} days ago"],
        ["temperature {99.6-101.3} F", "wound culture sent"],
        {"T8141XA": Variant(["it's just at the edges of the cut"],
                            ["erythema and pus limited to the skin edges, no collection underneath"],
                            "superficial incisional surgical site infection"),
         "T8142XA": Variant(["it hurts deep under the scar"],
                            ["ultrasound shows a fluid collection in the muscle layer, fascia involved"],
                            "deep incisional surgical site infection"),
         "T814XXA": Variant(["the surgeon's office sent me over"], ["infected incision, depth not documented"],
                            "postoperative wound infection")},
        ["no vomiting", "no pain in the calf"]),
    "encounter": Group(
        ["I'm here for a visit", "nothing's bothering me much"],
        ["heart and lungs normal"],
        {"Z0000": Variant(["it's my yearly checkup", "I feel fine"], ["normal exam, routine labs within normal limits"],
                          "general adult medical examination without abnormal findings"),
         "Z0001": Variant(["it's my yearly checkup", "I feel fine, I think"],
                          ["blood pressure {142-158}/{92-100} on repeat, new", "fasting glucose {104-122} mg/dL"],
                          "general adult medical examination with abnormal findings"),
         "Z23": Variant(["I'm here for my flu shot", "I need my tetanus booster"],
                        ["vaccine given in the left deltoid", "no contraindications"], "encounter for immunization")},
        ["no fever today", "no recent illness"]),
}

NAMES = ["Mr. Alvarez", "Ms. Chen", "Mrs. Okafor", "Mr. Novak", "Ms. Patel", "Mr. Haddad", "Mrs. Larsen", "Ms. Kim",
         "Mr. Rossi", "Mrs. Nguyen", "Mr. Schmidt", "Ms. Dubois", "Mr. Ito", "Mrs. Kowalski"]
# Other conditions, said as history: comorbidities beside the coded one
HISTORY = ["I have high blood pressure", "my thyroid is underactive", "I get reflux", "I had a knee scope on the "
           "{right|left} years ago", "I had asthma as a child", "I take a statin for cholesterol", "I passed a kidney "
           "stone once", "I broke my {right|left} wrist years ago", "I had migraines in my twenties",
           "I was treated for depression after my divorce", "nothing chronic", "diabetes runs in my family"]
DISTRACTORS = ["I also stubbed my {right|left} toe last week but that's fine", "my sister has asthma",
               "I had a cold a month ago", "I drink two coffees a day", "I've been stressed at work",
               "my {right|left} shoulder was sore last year but it's better", "I take a vitamin D supplement",
               "my husband had the flu", "my {right|left} ear popped on the plane last month"]
SPEAKERS = [("[doctor]:", "[patient]:"), ("**Doctor:**", "**Patient:**"), ("Doctor:", "Patient:"), ("[doctor]", "[{name}]:")]
OPENERS = ["What brings you in today?", "How can I help you today?", "Tell me what's going on.", "What's been bothering you?"]
FOLLOWUPS = ["Anything else?", "How long has this been going on?", "Does anything make it better or worse?",
             "Any other symptoms?", "Go on."]
CODE_MENTIONS = ["(ICD-10: {code})", "ICD-10 {code}", "[{code}]"]


def _fill(text: str, rng: random.Random) -> str:
    """``{lo-hi}`` -> a number in that range (one decimal if the bounds have one); ``{a|b}`` -> one of them."""
    def number(m):
        lo, hi = m.group(1), m.group(2)
        if "." in lo:
            return f"{rng.uniform(float(lo), float(hi)):.1f}"
        return str(rng.randint(int(lo), int(hi)))

    text = re.sub(r"\{(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)\}", number, text)
    return re.sub(r"\{([^{}]*\|[^{}]*)\}", lambda m: rng.choice(m.group(1).split("|")), text)


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "?", "!")) else ".")


def _encounter(group: Group, code: str, rng: random.Random) -> dict:
    v = group.codes[code]
    pick = lambda items, lo, hi: [_fill(x, rng) for x in rng.sample(items, k=min(len(items), rng.randint(lo, hi)))]  # noqa: E731
    # where the separating detail shows: in words, only in a finding, or both
    mode = rng.choices(["said", "found", "both"], weights=[35, 35, 30])[0]
    said = pick(group.complaints, 1, 2) + (pick(v.said, 1, 2) if mode != "found" else [])
    seen = pick(group.findings, 1, 2) + (pick(v.found, 1, 2) if mode != "said" else [])
    rng.shuffle(said)
    rng.shuffle(seen)
    name, age = rng.choice(NAMES), rng.randint(19, 86)
    doc, pat = rng.choice(SPEAKERS)
    pat = pat.format(name=name)
    turns = [(doc, rng.choice(OPENERS)), (pat, _sentence(said[0]))]
    for line in said[1:]:
        turns += [(doc, rng.choice(FOLLOWUPS)), (pat, _sentence(line))]
    history = _fill(rng.choice(HISTORY), rng)
    if rng.random() < 0.7:
        turns += [(doc, "Any medical history I should know about?"), (pat, _sentence(history))]
    if rng.random() < 0.5:
        turns += [(pat, _sentence(_fill(rng.choice(DISTRACTORS), rng)))]
    negated = rng.sample(group.negations, k=min(len(group.negations), rng.randint(1, 2)))
    turns += [(doc, "Any " + negated[0].removeprefix("no ") + "?"), (pat, "No.")] + [(doc, f"And {n}?") for n in negated[1:]]
    if len(negated) > 1:
        turns += [(pat, "None.")]
    turns += [(doc, "Let me examine you."), (doc, f"I note {' and '.join(seen)}.")]
    dialogue = "\n".join(f"{who} {what}" for who, what in turns)
    mention = (" " + rng.choice(CODE_MENTIONS).format(code=icd10.dotted(code))) if rng.random() < 0.33 else ""
    note = (f"**1. Subjective:** {name}, {age} years old, reports: {'; '.join(said)}; {'; '.join(negated)}. "
            f"History: {history}.\n**2. Objective:** {_sentence('; '.join(seen))}\n"
            f"**3. Assessment:** {_sentence(v.assessment)[:-1]}{mention}.\n**4. Plan:** Treatment and follow-up discussed.")
    return {"dialogue": dialogue, "note": note}


def build_demo_frame(rows_per_code: int | tuple[int, int] = ROWS_PER_CODE, seed: int = SEED) -> pd.DataFrame:
    """The demo set in the newer MedSynth schema (``Note, Dialogue, ICD10, ICD10_desc``); ``rows_per_code``
    is a number or a (min, max) range drawn per code."""
    rng = random.Random(seed)
    lo, hi = (rows_per_code, rows_per_code) if isinstance(rows_per_code, int) else rows_per_code
    records = []
    for group in GROUPS.values():
        for code in group.codes:
            desc = (icd10.description(code) or group.codes[code].assessment).upper()
            for _ in range(rng.randint(lo, hi)):
                enc = _encounter(group, code, rng)
                records.append({"Note": enc["note"], "Dialogue": enc["dialogue"], "ICD10": code, "ICD10_desc": desc})
    return pd.DataFrame.from_records(records)
