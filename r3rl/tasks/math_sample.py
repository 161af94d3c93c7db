"""A built-in offline sample of math problems, written for r3rl in the two styles real data comes in.

Used by `MathTask()` when no `path` is given, so demos and tests run without the
hub. GSM8K-style rows end their worked answer with `#### <number>`; MATH-style
rows carry a LaTeX solution whose final answer is in `\\boxed{...}` (fractions,
roots, pi, tuples, intervals, negative numbers). Every answer was worked by hand.
"""

from __future__ import annotations

__all__ = ["SAMPLE"]

SAMPLE: list[dict[str, str]] = [
    # ------------------------------------------------------------------ GSM8K style
    {"question": "Mia buys 3 notebooks at $4 each and a pen for $2. How many dollars does she spend?",
     "answer": "3 notebooks cost 3 * 4 = 12 dollars. With the pen she spends 12 + 2 = 14 dollars.\n#### 14"},
    {"question": "A baker makes 48 muffins and puts them in boxes of 6. How many boxes does he fill?",
     "answer": "48 / 6 = 8 boxes.\n#### 8"},
    {"question": "Tom reads 15 pages a day. How many pages does he read in 2 weeks?",
     "answer": "2 weeks are 14 days, so 15 * 14 = 210 pages.\n#### 210"},
    {"question": "A train travels 60 miles per hour for 3 hours and then 40 miles per hour for 2 hours. "
                 "How many miles does it travel in total?",
     "answer": "60 * 3 = 180 miles, then 40 * 2 = 80 miles, so 180 + 80 = 260 miles.\n#### 260"},
    {"question": "Sara had 120 stickers. She gave a quarter of them to her brother and 10 to a friend. "
                 "How many stickers does she have left?",
     "answer": "A quarter is 120 / 4 = 30. She has 120 - 30 - 10 = 80 left.\n#### 80"},
    {"question": "A shirt costs $25 and is on sale for 20% off. What is the sale price in dollars?",
     "answer": "20% of 25 is 5, so the price is 25 - 5 = 20 dollars.\n#### 20"},
    {"question": "There are 4 classes with 28 students each. Each student needs 3 pencils. "
                 "How many pencils are needed?",
     "answer": "4 * 28 = 112 students need 112 * 3 = 336 pencils.\n#### 336"},
    {"question": "Liam is 3 times as old as his sister, who is 7. How old will Liam be in 5 years?",
     "answer": "Liam is 3 * 7 = 21 now, so 21 + 5 = 26 in 5 years.\n#### 26"},
    {"question": "A farm has 12 cows and 30 chickens. How many legs do the animals have altogether?",
     "answer": "Cows have 12 * 4 = 48 legs and chickens 30 * 2 = 60 legs: 48 + 60 = 108.\n#### 108"},
    {"question": "A company pays $1,250 a month in rent. How many dollars of rent does it pay in a year?",
     "answer": "1,250 * 12 = 15,000 dollars.\n#### 15,000"},
    {"question": "Emma saves $35 a week. How many weeks does she need to save $420?",
     "answer": "420 / 35 = 12 weeks.\n#### 12"},
    {"question": "A tank holds 500 liters and loses 8 liters an hour. How many liters are left after a day?",
     "answer": "In 24 hours it loses 8 * 24 = 192 liters, leaving 500 - 192 = 308.\n#### 308"},
    {"question": "Noah ran 5 km on Monday, twice that on Tuesday and 3 km less than Tuesday on Wednesday. "
                 "How many km did he run in the three days?",
     "answer": "Tuesday 10 km, Wednesday 7 km; 5 + 10 + 7 = 22 km.\n#### 22"},
    {"question": "A pizza is cut into 8 slices. 3 friends eat 2 slices each. What fraction of the pizza is left?",
     "answer": "They eat 6 slices, leaving 2 of 8, which is 1/4.\n#### 1/4"},
    {"question": "The temperature was 4 degrees in the morning and fell 11 degrees by night. "
                 "What was the temperature at night?",
     "answer": "4 - 11 = -7 degrees.\n#### -7"},
    {"question": "A box of 12 eggs costs $3.60. How much does one egg cost in dollars?",
     "answer": "3.60 / 12 = 0.30 dollars.\n#### 0.3"},
    {"question": "Ava has 3 red, 5 blue and 4 green marbles. How many more blue marbles than red does she have?",
     "answer": "5 - 3 = 2.\n#### 2"},
    {"question": "A car uses 6 liters of fuel per 100 km. How many liters does it use for 350 km?",
     "answer": "350 / 100 * 6 = 21 liters.\n#### 21"},
    {"question": "A garden is 9 meters long and 6 meters wide. What is its perimeter in meters?",
     "answer": "2 * (9 + 6) = 30 meters.\n#### 30"},
    {"question": "Ben earns $18 an hour and works 7 hours a day for 5 days. How many dollars does he earn?",
     "answer": "18 * 7 = 126 a day, and 126 * 5 = 630 dollars.\n#### 630"},
    # ------------------------------------------------------------------- MATH style
    {"question": "Simplify $\\frac{12}{18}$.",
     "answer": "Dividing top and bottom by 6 gives $\\boxed{\\frac{2}{3}}$."},
    {"question": "What is $\\sqrt{50}$ in simplest radical form?",
     "answer": "$\\sqrt{50} = \\sqrt{25 \\cdot 2} = \\boxed{5\\sqrt{2}}$."},
    {"question": "Solve for $x$: $3x - 7 = 11$.",
     "answer": "$3x = 18$, so $x = \\boxed{6}$."},
    {"question": "What is the area of a circle of radius 3? Express your answer in terms of $\\pi$.",
     "answer": "The area is $\\pi r^2 = \\boxed{9\\pi}$."},
    {"question": "Compute $2^{10} - 10^2$.",
     "answer": "$1024 - 100 = \\boxed{924}$."},
    {"question": "Find the sum of the roots of $x^2 - 5x + 6 = 0$.",
     "answer": "By Vieta's formulas the sum is $\\boxed{5}$."},
    {"question": "What is the slope of the line through $(1, 2)$ and $(4, 11)$?",
     "answer": "$\\frac{11 - 2}{4 - 1} = \\frac{9}{3} = \\boxed{3}$."},
    {"question": "Find the midpoint of the segment from $(2, -4)$ to $(6, 8)$.",
     "answer": "Average the coordinates: $\\boxed{(4, 2)}$."},
    {"question": "For which $x$ is $2x + 1 > 7$? Give your answer in interval notation.",
     "answer": "$2x > 6$, so $x > 3$: $\\boxed{(3, \\infty)}$."},
    {"question": "Evaluate $\\frac{1}{2} + \\frac{1}{3}$.",
     "answer": "$\\frac{3}{6} + \\frac{2}{6} = \\boxed{\\frac{5}{6}}$."},
    {"question": "How many positive divisors does 36 have?",
     "answer": "$36 = 2^2 \\cdot 3^2$ has $(2+1)(2+1) = \\boxed{9}$ divisors."},
    {"question": "What is $\\binom{6}{2}$?",
     "answer": "$\\binom{6}{2} = \\frac{6 \\cdot 5}{2} = \\boxed{15}$."},
    {"question": "If $f(x) = x^2 - 3x$, what is $f(-2)$?",
     "answer": "$f(-2) = 4 + 6 = \\boxed{10}$."},
    {"question": "What is the remainder when $2^{20}$ is divided by 7?",
     "answer": "$2^3 = 8 \\equiv 1 \\pmod 7$, so $2^{20} = (2^3)^6 \\cdot 2^2 \\equiv 4$: the remainder is $\\boxed{4}$."},
    {"question": "Rationalize the denominator: $\\frac{6}{\\sqrt{3}}$.",
     "answer": "$\\frac{6}{\\sqrt{3}} \\cdot \\frac{\\sqrt{3}}{\\sqrt{3}} = \\frac{6\\sqrt{3}}{3} = \\boxed{2\\sqrt{3}}$."},
    {"question": "What is the smallest prime greater than 90?",
     "answer": "91 = 7 * 13, 92 is even, 93 = 3 * 31, 94 even, 95 = 5 * 19, 96 even, 97 is prime: $\\boxed{97}$."},
    {"question": "Solve $x^2 = 49$ for the negative root.",
     "answer": "$x = \\pm 7$; the negative root is $\\boxed{-7}$."},
    {"question": "Express $0.\\overline{3}$ as a common fraction.",
     "answer": "$x = 0.\\overline{3}$ gives $10x - x = 3$, so $x = \\boxed{\\frac{1}{3}}$."},
    {"question": "What is $15\\%$ of 80?",
     "answer": "$0.15 \\cdot 80 = \\boxed{12}$."},
    {"question": "The angles of a triangle are in the ratio 1:2:3. What is the largest angle in degrees?",
     "answer": "The angles are 30, 60 and 90 degrees, so the largest is $\\boxed{90}$."},
]
