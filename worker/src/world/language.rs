//! What people say about the picture-book world: captions in child-directed language
//! with varied phrasing, question-answer items with distractors, caption pairs that swap
//! an attribute (Winoground-style), and scoring a caption against the true scene.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::scene::{COLOURS, Colour, SHAPES, SIZES, Scene, Shape, Thing};
use crate::rng::Rng;

pub(crate) const NUMBERS: [&str; 4] = ["zero", "one", "two", "three"];

fn position(thing: &Thing) -> &'static str {
    match (thing.column, thing.row) {
        (0, _) => "on the left",
        (2, _) => "on the right",
        (_, 0) => "at the top",
        (_, 2) => "at the bottom",
        _ => "in the middle",
    }
}

/// How `a` stands to `b`, when the grid makes it plain.
fn relation(a: &Thing, b: &Thing) -> Option<&'static str> {
    if a.row == b.row && a.column != b.column {
        Some(if a.column < b.column {
            "to the left of"
        } else {
            "to the right of"
        })
    } else if a.column == b.column && a.row != b.row {
        Some(if a.row < b.row { "above" } else { "below" })
    } else {
        None
    }
}

fn one_thing(thing: &Thing, rng: &mut Rng) -> String {
    let d = thing.describe();
    match rng.below(5) {
        0 => format!("look, a {d}!"),
        1 => format!("there is a {d} {}.", position(thing)),
        2 => format!("i see a {d}."),
        3 => format!("a {d}. it is {}.", thing.colour.word()),
        _ => format!("what a nice {d}!"),
    }
}

/// A caption of the whole scene.
pub fn caption(scene: &Scene, rng: &mut Rng) -> String {
    let things = &scene.things;
    if things.len() == 1 {
        return one_thing(&things[0], rng);
    }
    // A relation names two things: used only when there are just two, so every caption
    // names everything in its picture.
    if things.len() == 2
        && let Some(rel) = relation(&things[0], &things[1])
        && rng.below(2) == 0
    {
        let (a, b) = (&things[0], &things[1]);
        return format!(
            "the {} {} is {rel} the {} {}.",
            a.colour.word(),
            a.shape.word(),
            b.colour.word(),
            b.shape.word()
        );
    }
    let named: Vec<String> = things
        .iter()
        .map(|t| format!("a {}", t.describe()))
        .collect();
    let (last, rest) = named.split_last().expect("scenes have at least one thing");
    match rng.below(3) {
        0 => format!("look, {} and {last}!", rest.join(", ")),
        1 => format!(
            "there are {} things: {} and {last}.",
            NUMBERS[things.len()],
            rest.join(", ")
        ),
        _ => format!("i see {} and {last}.", rest.join(", ")),
    }
}

/// A question about an image, its answer, and wrong answers to choose among.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    pub question: String,
    pub answer: String,
    pub distractors: Vec<String>,
}

fn others(all: &[&'static str], answer: &str) -> Vec<String> {
    all.iter()
        .filter(|w| **w != answer)
        .map(|w| w.to_string())
        .collect()
}

/// Questions the scene answers without ambiguity.
pub fn questions(scene: &Scene) -> Vec<Question> {
    let colours: Vec<&str> = COLOURS.iter().map(|c| c.word()).collect();
    let shapes: Vec<&str> = SHAPES.iter().map(|s| s.word()).collect();
    let sizes: Vec<&str> = SIZES.iter().map(|s| s.word()).collect();
    let unique_shape = |s: Shape| scene.things.iter().filter(|t| t.shape == s).count() == 1;
    let unique_colour = |c: Colour| scene.things.iter().filter(|t| t.colour == c).count() == 1;
    let mut out = vec![Question {
        question: "how many things are there?".into(),
        answer: NUMBERS[scene.things.len()].into(),
        distractors: others(&NUMBERS[1..], NUMBERS[scene.things.len()]),
    }];
    for t in &scene.things {
        if unique_shape(t.shape) {
            out.push(Question {
                question: format!("what colour is the {}?", t.shape.word()),
                answer: t.colour.word().into(),
                distractors: others(&colours, t.colour.word()),
            });
        }
        if unique_colour(t.colour) {
            out.push(Question {
                question: format!("what shape is the {} one?", t.colour.word()),
                answer: t.shape.word().into(),
                distractors: others(&shapes, t.shape.word()),
            });
        }
        if unique_shape(t.shape) && unique_colour(t.colour) {
            out.push(Question {
                question: format!(
                    "is the {} {} big or small?",
                    t.colour.word(),
                    t.shape.word()
                ),
                answer: t.size.word().into(),
                distractors: others(&sizes, t.size.word()),
            });
        }
    }
    out
}

/// Two captions with the same words in another order, and the scene each one is true of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapPair {
    pub caption_0: String,
    pub caption_1: String,
    pub scene_0: Scene,
    pub scene_1: Scene,
}

/// Swaps the colours of the first two things, when they differ in colour and shape.
pub fn swap_pair(scene: &Scene) -> Option<SwapPair> {
    let [a, b, ..] = scene.things.as_slice() else {
        return None;
    };
    if a.colour == b.colour || a.shape == b.shape {
        return None;
    }
    let text = |x: &Thing, y: &Thing| {
        format!(
            "a {} {} and a {} {}.",
            x.colour.word(),
            x.shape.word(),
            y.colour.word(),
            y.shape.word()
        )
    };
    let mut swapped = Scene {
        things: vec![*a, *b],
    };
    swapped.things[0].colour = b.colour;
    swapped.things[1].colour = a.colour;
    let (sa, sb) = (swapped.things[0], swapped.things[1]);
    Some(SwapPair {
        caption_0: text(a, b),
        caption_1: text(&sa, &sb),
        scene_0: Scene {
            things: vec![*a, *b],
        },
        scene_1: swapped,
    })
}

/// (colour, shape) pairs a caption names, e.g. "big red circle" -> (red, circle).
fn named_pairs(caption: &str) -> BTreeSet<(String, String)> {
    let words: Vec<&str> = caption
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    let mut pairs = BTreeSet::new();
    for (i, word) in words.iter().enumerate() {
        if let Some(colour) = COLOURS.iter().find(|c| c.word() == *word) {
            let shape = words[i + 1..]
                .iter()
                .take(2)
                .find_map(|w| SHAPES.iter().find(|s| s.word() == *w));
            if let Some(shape) = shape {
                pairs.insert((colour.word().to_string(), shape.word().to_string()));
            }
        }
    }
    pairs
}

/// How well a caption names what the scene shows: the overlap (Jaccard) of the
/// (colour, shape) pairs it names with those in the scene. 1 is exact, 0 is all wrong.
pub fn caption_score(caption: &str, scene: &Scene) -> f64 {
    let named = named_pairs(caption);
    let truth: BTreeSet<(String, String)> = scene
        .things
        .iter()
        .map(|t| (t.colour.word().to_string(), t.shape.word().to_string()))
        .collect();
    let union = named.union(&truth).count();
    if union == 0 {
        return 0.0;
    }
    named.intersection(&truth).count() as f64 / union as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::scene::Size;

    fn thing(shape: Shape, colour: Colour, column: u8, row: u8) -> Thing {
        Thing {
            shape,
            colour,
            size: Size::Big,
            column,
            row,
        }
    }

    #[test]
    fn captions_are_scored_by_the_pairs_they_name() {
        let scene = Scene {
            things: vec![
                thing(Shape::Circle, Colour::Red, 0, 1),
                thing(Shape::Square, Colour::Blue, 2, 1),
            ],
        };
        assert_eq!(
            caption_score("the red circle is to the left of the blue square.", &scene),
            1.0
        );
        assert_eq!(caption_score("a big red circle.", &scene), 0.5);
        assert_eq!(
            caption_score("a blue circle and a red square.", &scene),
            0.0
        );
        let mut rng = Rng::new(1);
        for _ in 0..20 {
            assert_eq!(caption_score(&caption(&scene, &mut rng), &scene), 1.0);
        }
    }

    #[test]
    fn questions_have_their_answer_among_the_choices_once() {
        let scene = Scene {
            things: vec![
                thing(Shape::Circle, Colour::Red, 0, 0),
                thing(Shape::Circle, Colour::Blue, 1, 0),
            ],
        };
        let qs = questions(&scene);
        assert!(
            qs.iter()
                .all(|q| !q.distractors.contains(&q.answer) && !q.distractors.is_empty())
        );
        // Two circles: "what colour is the circle?" would be ambiguous.
        assert!(
            !qs.iter()
                .any(|q| q.question == "what colour is the circle?")
        );
        assert!(
            qs.iter()
                .any(|q| q.question == "what shape is the red one?" && q.answer == "circle")
        );
    }

    #[test]
    fn swap_pairs_use_the_same_words_for_different_scenes() {
        let scene = Scene {
            things: vec![
                thing(Shape::Circle, Colour::Red, 0, 0),
                thing(Shape::Square, Colour::Blue, 2, 2),
            ],
        };
        let pair = swap_pair(&scene).unwrap();
        let mut w0: Vec<&str> = pair.caption_0.split_whitespace().collect();
        let mut w1: Vec<&str> = pair.caption_1.split_whitespace().collect();
        assert_ne!(w0, w1);
        w0.sort();
        w1.sort();
        assert_eq!(w0, w1);
        assert_eq!(caption_score(&pair.caption_1, &pair.scene_1), 1.0);
        assert_eq!(caption_score(&pair.caption_1, &pair.scene_0), 0.0);
    }
}
