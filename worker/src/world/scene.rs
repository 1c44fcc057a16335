//! The picture-book world's scenes: a few things, each a shape with a colour and a
//! size, placed in a 3x3 grid of cells so that "left of" and "above" are unambiguous.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Big,
}

pub const SHAPES: [Shape; 4] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Diamond,
];
pub const COLOURS: [Colour; 6] = [
    Colour::Red,
    Colour::Green,
    Colour::Blue,
    Colour::Yellow,
    Colour::Purple,
    Colour::Orange,
];
pub const SIZES: [Size; 2] = [Size::Small, Size::Big];

impl Shape {
    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Diamond => "diamond",
        }
    }
}

impl Colour {
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 170, 60],
            Colour::Blue => [40, 80, 220],
            Colour::Yellow => [235, 210, 40],
            Colour::Purple => [140, 60, 180],
            Colour::Orange => [245, 140, 30],
        }
    }
}

impl Size {
    pub fn word(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Big => "big",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thing {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    /// Grid cell: column 0 (left) to 2 (right).
    pub column: u8,
    /// Grid cell: row 0 (top) to 2 (bottom).
    pub row: u8,
}

impl Thing {
    /// "big red circle"
    pub fn describe(&self) -> String {
        format!(
            "{} {} {}",
            self.size.word(),
            self.colour.word(),
            self.shape.word()
        )
    }
}

/// What a picture shows; kept beside unlabeled images to score generated captions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scene {
    pub things: Vec<Thing>,
}

impl Scene {
    /// One to three things in distinct cells.
    pub fn random(rng: &mut Rng) -> Self {
        let count = 1 + rng.below(3) as usize;
        let mut cells: Vec<u8> = (0..9).collect();
        let mut things = Vec::with_capacity(count);
        for _ in 0..count {
            let cell = cells.remove(rng.below(cells.len() as u64) as usize);
            things.push(Thing {
                shape: rng.pick(&SHAPES),
                colour: rng.pick(&COLOURS),
                size: rng.pick(&SIZES),
                column: cell % 3,
                row: cell / 3,
            });
        }
        Self { things }
    }
}
